package runtime

import (
	"errors"
	"fmt"

	eventsapi "github.com/containerd/containerd/api/events"
	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
	"google.golang.org/protobuf/proto"

	"github.com/flotilla/flotilla/taskd/metadata"
)

// ExitStore persists, for every task that exists, its processes and the exit
// of each that has ended — the exit taskd has announced. It is what lets a
// client's Wait or Delete learn an exit after the shim is gone, and what
// keeps an exit from being announced twice when both the shim (retrying
// after taskd restarted) and taskd's reconciliation report it.
//
// A task's records live from Track (task creation) to Drop (task deletion).
type ExitStore struct {
	db *bolt.DB
}

// NewExitStore returns the exit store kept in db (see package metadata).
func NewExitStore(db *bolt.DB) *ExitStore { return &ExitStore{db: db} }

// Track starts the records of task containerID with a process id (the
// container's id for the init process, the exec id otherwise) that has not
// exited. Tracking the init process clears what a previous task of the same
// container left.
func (s *ExitStore) Track(ns, containerID, id string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b, err := metadata.CreateStoreBucket(tx, ns, metadata.BucketExits)
		if err != nil {
			return err
		}
		if id == containerID {
			if err := b.DeleteBucket([]byte(containerID)); err != nil && !errors.Is(err, bolterrors.ErrBucketNotFound) {
				return err
			}
		}
		tb, err := b.CreateBucketIfNotExists([]byte(containerID))
		if err != nil {
			return err
		}
		return tb.Put([]byte(id), nil)
	})
}

// Record keeps exit e (of process e.ID of task e.ContainerID) and reports
// whether it is news: false when the same exit (same process, same pid) was
// recorded before. An exit of a task that is not tracked (already deleted) is
// news but not kept.
func (s *ExitStore) Record(ns string, e *eventsapi.TaskExit) (bool, error) {
	id := e.ID
	if id == "" {
		id = e.ContainerID
	}
	first := true
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := metadata.StoreBucket(tx, ns, metadata.BucketExits)
		if b == nil {
			return nil
		}
		tb := b.Bucket([]byte(e.ContainerID))
		if tb == nil {
			return nil
		}
		if v := tb.Get([]byte(id)); len(v) > 0 {
			var prev eventsapi.TaskExit
			if proto.Unmarshal(v, &prev) == nil && prev.Pid == e.Pid {
				first = false
				return nil
			}
		}
		v, err := proto.Marshal(e)
		if err != nil {
			return err
		}
		return tb.Put([]byte(id), v)
	})
	if err != nil {
		return false, fmt.Errorf("record exit of %s/%s: %w", e.ContainerID, id, err)
	}
	return first, nil
}

// Get returns the recorded exit of process id of task containerID, or
// NotFound when it has not exited (as far as taskd knows) or is not tracked.
func (s *ExitStore) Get(ns, containerID, id string) (*eventsapi.TaskExit, error) {
	var e *eventsapi.TaskExit
	err := s.db.View(func(tx *bolt.Tx) error {
		b := metadata.StoreBucket(tx, ns, metadata.BucketExits)
		if b == nil || b.Bucket([]byte(containerID)) == nil {
			return nil
		}
		v := b.Bucket([]byte(containerID)).Get([]byte(id))
		if len(v) == 0 {
			return nil
		}
		e = &eventsapi.TaskExit{}
		return proto.Unmarshal(v, e)
	})
	if err != nil {
		return nil, fmt.Errorf("exit of %s/%s: %w", containerID, id, err)
	}
	if e == nil {
		return nil, fmt.Errorf("no exit recorded for process %q of task %q: %w", id, containerID, errdefs.ErrNotFound)
	}
	return e, nil
}

// Pending returns the tracked processes of task containerID with no exit
// recorded.
func (s *ExitStore) Pending(ns, containerID string) ([]string, error) {
	var ids []string
	err := s.db.View(func(tx *bolt.Tx) error {
		b := metadata.StoreBucket(tx, ns, metadata.BucketExits)
		if b == nil || b.Bucket([]byte(containerID)) == nil {
			return nil
		}
		return b.Bucket([]byte(containerID)).ForEach(func(k, v []byte) error {
			if len(v) == 0 {
				ids = append(ids, string(k))
			}
			return nil
		})
	})
	return ids, err
}

// Forget drops process id of task containerID.
func (s *ExitStore) Forget(ns, containerID, id string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := metadata.StoreBucket(tx, ns, metadata.BucketExits)
		if b == nil || b.Bucket([]byte(containerID)) == nil {
			return nil
		}
		return b.Bucket([]byte(containerID)).Delete([]byte(id))
	})
}

// Drop forgets task containerID and all its processes.
func (s *ExitStore) Drop(ns, containerID string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := metadata.StoreBucket(tx, ns, metadata.BucketExits)
		if b == nil {
			return nil
		}
		if err := b.DeleteBucket([]byte(containerID)); err != nil && !errors.Is(err, bolterrors.ErrBucketNotFound) {
			return err
		}
		return nil
	})
}
