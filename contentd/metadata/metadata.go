// Package metadata is contentd's bbolt database: one file holding, per
// namespace, the namespace's labels, images, leases and the records that make
// blobs visible in that namespace. Each store (namespaces, images, leases,
// content) owns its bucket under the namespace's; this package owns the
// layout and the relations between stores (what a lease holds).
//
// Layout:
//
//	v1/
//	  <namespace>/
//	    labels/   key → value
//	    images/   name → store-defined record
//	    content/  digest → store-defined record
//	    leases/   id → bucket { created, labels/, resources/<type>/<id> }
package metadata

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"
)

// Bucket names of the layout above.
var (
	bucketV1      = []byte("v1")
	BucketLabels  = []byte("labels")
	BucketImages  = []byte("images")
	BucketContent = []byte("content")
	BucketLeases  = []byte("leases")
	// Inside a lease's bucket:
	BucketResources = []byte("resources")
	KeyCreated      = []byte("created")
)

// Open opens (creating if needed) the database at path.
func Open(path string) (*bolt.DB, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o711); err != nil {
		return nil, err
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
		return nil, err
	}
	return db, nil
}

// Namespaces returns the bucket holding every namespace's bucket.
func Namespaces(tx *bolt.Tx) *bolt.Bucket { return tx.Bucket(bucketV1) }

// Namespace returns the bucket of namespace ns, or nil if it does not exist.
func Namespace(tx *bolt.Tx, ns string) *bolt.Bucket {
	return tx.Bucket(bucketV1).Bucket([]byte(ns))
}

// CreateNamespace returns the bucket of namespace ns, creating it (as
// containerd does, a namespace springs into being when first written to).
// It reports whether it was created.
func CreateNamespace(tx *bolt.Tx, ns string) (*bolt.Bucket, bool, error) {
	if b := Namespace(tx, ns); b != nil {
		return b, false, nil
	}
	b, err := tx.Bucket(bucketV1).CreateBucket([]byte(ns))
	if err != nil {
		return nil, false, fmt.Errorf("create namespace %s: %w", ns, err)
	}
	return b, true, nil
}

// StoreBucket returns the bucket named name (BucketImages, ...) under
// namespace ns, or nil when either does not exist.
func StoreBucket(tx *bolt.Tx, ns string, name []byte) *bolt.Bucket {
	b := Namespace(tx, ns)
	if b == nil {
		return nil
	}
	return b.Bucket(name)
}

// CreateStoreBucket returns the bucket named name under namespace ns,
// creating both as needed.
func CreateStoreBucket(tx *bolt.Tx, ns string, name []byte) (*bolt.Bucket, error) {
	b, _, err := CreateNamespace(tx, ns)
	if err != nil {
		return nil, err
	}
	return b.CreateBucketIfNotExists(name)
}

// Lease resource types, as containerd names them in leases.Resource.Type.
const (
	ResourceContent = "content"
	ResourceIngest  = "ingests"
	ResourceImage   = "image"
)

// AddLeaseResource records, inside tx, that lease id in namespace ns holds
// the resource (kind, id). A missing lease is NotFound.
func AddLeaseResource(tx *bolt.Tx, ns, lease, kind, id string) error {
	lb := leaseBucket(tx, ns, lease)
	if lb == nil {
		return fmt.Errorf("lease %q: %w", lease, errdefs.ErrNotFound)
	}
	rb, err := lb.CreateBucketIfNotExists(BucketResources)
	if err != nil {
		return err
	}
	kb, err := rb.CreateBucketIfNotExists([]byte(kind))
	if err != nil {
		return err
	}
	return kb.Put([]byte(id), nil)
}

// RemoveLeaseResource forgets that lease holds (kind, id); a missing lease
// is NotFound, a resource it does not hold is no error.
func RemoveLeaseResource(tx *bolt.Tx, ns, lease, kind, id string) error {
	lb := leaseBucket(tx, ns, lease)
	if lb == nil {
		return fmt.Errorf("lease %q: %w", lease, errdefs.ErrNotFound)
	}
	if kb := bucketPath(lb, BucketResources, []byte(kind)); kb != nil {
		return kb.Delete([]byte(id))
	}
	return nil
}

func leaseBucket(tx *bolt.Tx, ns, lease string) *bolt.Bucket {
	b := StoreBucket(tx, ns, BucketLeases)
	if b == nil {
		return nil
	}
	return b.Bucket([]byte(lease))
}

func bucketPath(b *bolt.Bucket, names ...[]byte) *bolt.Bucket {
	for _, n := range names {
		if b = b.Bucket(n); b == nil {
			return nil
		}
	}
	return b
}

// LeaseHolds reports whether any lease of namespace ns holds the resource
// (kind, id).
func LeaseHolds(tx *bolt.Tx, ns, kind, id string) bool {
	leases := StoreBucket(tx, ns, BucketLeases)
	if leases == nil {
		return false
	}
	held := false
	leases.ForEachBucket(func(lease []byte) error {
		if kb := bucketPath(leases.Bucket(lease), BucketResources, []byte(kind)); kb != nil {
			// Resources are stored as keys with empty values.
			if k, _ := kb.Cursor().Seek([]byte(id)); string(k) == id {
				held = true
			}
		}
		return nil
	})
	return held
}
