package gc

import (
	"context"
	"sync"
	"time"
)

// Schedule settings, after containerd's gc scheduler: a collection follows
// deletions (of images and leases here, of containers in taskd, expired
// leases) after ScheduleDelay, but collections take no more than
// PauseThreshold of the time (a collection of d waits d/PauseThreshold
// after the last). As in containerd nothing is collected while nothing is
// deleted: an object made without a lease and never referenced stays until
// then.
type Schedule struct {
	ScheduleDelay  time.Duration
	PauseThreshold float64
}

// DefaultSchedule is containerd's.
var DefaultSchedule = Schedule{ScheduleDelay: 0, PauseThreshold: 0.02}

type scheduler struct {
	trigger chan struct{}

	mu   sync.Mutex
	last time.Duration // how long the last collection took
}

func (s *scheduler) init() { s.trigger = make(chan struct{}, 1) }

func (s *scheduler) collected(d time.Duration) {
	s.mu.Lock()
	s.last = d
	s.mu.Unlock()
}

// Deleted tells the collector that something was deleted: with sync the
// collection runs before Deleted returns (as containerd answers a delete
// asked to be synchronous), otherwise it is scheduled.
func (c *Collector) Deleted(ctx context.Context, sync bool) error {
	if sync {
		_, err := c.Collect(ctx)
		return err
	}
	select {
	case c.sched.trigger <- struct{}{}:
	default: // one is already due
	}
	return nil
}

// Run collects as sched says until ctx ends.
func (c *Collector) Run(ctx context.Context, sched Schedule) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.sched.trigger:
			if !sleep(ctx, sched.ScheduleDelay) {
				return
			}
		}
		c.sched.mu.Lock()
		last := c.sched.last
		c.sched.mu.Unlock()
		if sched.PauseThreshold > 0 && !sleep(ctx, time.Duration(float64(last)/sched.PauseThreshold)) {
			return
		}
		c.Collect(ctx)
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
