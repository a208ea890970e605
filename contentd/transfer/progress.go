package transfer

import (
	"sync"
	"time"

	"github.com/containerd/containerd/api/types"
	transfertypes "github.com/containerd/containerd/api/types/transfer"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Progress event names, as containerd's transfer service sends them and
// ctr's progress display reads them.
const (
	eventWaiting       = "waiting"
	eventDownloading   = "downloading"
	eventUploading     = "uploading"
	eventComplete      = "complete"
	eventExists        = "already exists"
	eventExtracting    = "extracting"
	eventExtracted     = "extracted"
	eventSaved         = "saved"
	eventFetching      = "fetching image content"
	eventPushing       = "pushing content"
	eventPushed        = "pushed content"
	progressMinPeriod  = 100 * time.Millisecond
	progressChunkBytes = 4 << 20
)

// reporter sends a transfer's progress to the client. A nil reporter
// reports nothing. It is safe for concurrent use.
type reporter struct {
	send func(*transfertypes.Progress)

	mu      sync.Mutex
	parents map[digest.Digest][]string // blob → its parents' names
	root    string
	last    map[digest.Digest]time.Time
}

func newReporter(send func(*transfertypes.Progress), root string) *reporter {
	if send == nil {
		return nil
	}
	return &reporter{send: send, root: root, parents: map[digest.Digest][]string{}, last: map[digest.Digest]time.Time{}}
}

// status sends a line with no name: ctr shows it as the transfer's state.
func (r *reporter) status(event string) {
	if r == nil {
		return
	}
	r.send(&transfertypes.Progress{Event: event})
}

// named sends an event about a whole image (name) or its root descriptor.
func (r *reporter) named(event, name string, desc *ocispec.Descriptor) {
	if r == nil {
		return
	}
	p := &transfertypes.Progress{Event: event, Name: name}
	if desc != nil {
		p.Desc = descToProto(*desc)
		p.Progress, p.Total = 0, 0
	}
	r.send(p)
}

// children records that parent refers to children, so each child's events
// name it as their parent.
func (r *reporter) children(parent ocispec.Descriptor, children []ocispec.Descriptor) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range children {
		r.parents[c.Digest] = append(r.parents[c.Digest], refKey(parent))
	}
}

// blob sends event about desc with progress bytes done. "downloading" and
// "uploading" are sent at most every progressMinPeriod per blob unless
// progressChunkBytes more are done.
func (r *reporter) blob(event string, desc ocispec.Descriptor, done int64) {
	if r == nil {
		return
	}
	r.mu.Lock()
	if event == eventDownloading || event == eventUploading || event == eventExtracting {
		now := time.Now()
		if now.Sub(r.last[desc.Digest]) < progressMinPeriod && done < desc.Size {
			r.mu.Unlock()
			return
		}
		r.last[desc.Digest] = now
	}
	parents := r.parents[desc.Digest]
	if len(parents) == 0 {
		parents = []string{r.root}
	}
	parents = append([]string(nil), parents...)
	r.mu.Unlock()
	r.send(&transfertypes.Progress{
		Event:    event,
		Name:     refKey(desc),
		Parents:  parents,
		Progress: done,
		Total:    desc.Size,
		Desc:     descToProto(desc),
	})
}

func descToProto(d ocispec.Descriptor) *types.Descriptor {
	return &types.Descriptor{MediaType: d.MediaType, Digest: d.Digest.String(), Size: d.Size, Annotations: d.Annotations}
}

func descFromProto(d *types.Descriptor) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: d.GetMediaType(), Digest: digest.Digest(d.GetDigest()), Size: d.GetSize(), Annotations: d.GetAnnotations()}
}
