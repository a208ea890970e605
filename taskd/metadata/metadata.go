// Package metadata is taskd's bbolt database: one file holding, per
// namespace, the container records and the exit records of processes that
// taskd has seen end. Each store owns its bucket under the namespace's.
//
// Layout:
//
//	v1/
//	  <namespace>/
//	    containers/  id → containers.v1.Container (protobuf)
//	    exits/       container id → bucket { process id → events.TaskExit (protobuf) }
package metadata

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Bucket names of the layout above.
var (
	bucketV1         = []byte("v1")
	BucketContainers = []byte("containers")
	BucketExits      = []byte("exits")
)

// Open opens (creating if needed) the database at path.
func Open(path string) (*bolt.DB, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o711); err != nil {
		return nil, fmt.Errorf("open metadata: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open metadata %s: %w", path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketV1)
		return err
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("open metadata %s: %w", path, err)
	}
	return db, nil
}

// StoreBucket returns the bucket name of namespace ns, or nil when the
// namespace or the bucket does not exist.
func StoreBucket(tx *bolt.Tx, ns string, name []byte) *bolt.Bucket {
	nsb := tx.Bucket(bucketV1).Bucket([]byte(ns))
	if nsb == nil {
		return nil
	}
	return nsb.Bucket(name)
}

// CreateStoreBucket returns the bucket name of namespace ns, creating the
// namespace's bucket and its own as needed. tx must be writable.
func CreateStoreBucket(tx *bolt.Tx, ns string, name []byte) (*bolt.Bucket, error) {
	nsb, err := tx.Bucket(bucketV1).CreateBucketIfNotExists([]byte(ns))
	if err != nil {
		return nil, fmt.Errorf("namespace %s: %w", ns, err)
	}
	b, err := nsb.CreateBucketIfNotExists(name)
	if err != nil {
		return nil, fmt.Errorf("namespace %s: bucket %s: %w", ns, name, err)
	}
	return b, nil
}

// ForEachNamespace calls fn with the name and bucket of every namespace.
func ForEachNamespace(tx *bolt.Tx, fn func(ns string, b *bolt.Bucket) error) error {
	root := tx.Bucket(bucketV1)
	return root.ForEach(func(k, v []byte) error {
		if v != nil {
			return nil
		}
		return fn(string(k), root.Bucket(k))
	})
}

// Namespaces lists the namespaces that have a bucket, in order.
func Namespaces(db *bolt.DB) ([]string, error) {
	var out []string
	err := db.View(func(tx *bolt.Tx) error {
		return ForEachNamespace(tx, func(ns string, _ *bolt.Bucket) error {
			out = append(out, ns)
			return nil
		})
	})
	return out, err
}
