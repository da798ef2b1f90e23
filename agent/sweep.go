package agent

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/vtepd/vtepd/miss"
	"go.uber.org/zap"
)

// sweeper answers, on request, every address the kernel is still waiting on
// (Responder.Sweep), on a goroutine of its own so that the listener keeps
// draining the socket meanwhile. Requests coalesce: any number of them
// while a sweep is pending cost one more sweep.
//
// Two things ask for a sweep. A socket overflow: the misses it lost would
// otherwise wait for the kernel's retries, which come as one burst again, and
// the kernel reports an overflow once per episode of congestion, so sweeps
// repeat, 50 ms apart, until one finds nothing left. And a new lease: peers
// that sent to the new host before its lease was known got no answer, and
// the kernel asks again only a second later.
type sweeper struct {
	signal   chan struct{}
	overflow atomic.Bool // a pending request comes from an overflow

	sweeps, answered atomic.Uint64
}

func newSweeper() *sweeper { return &sweeper{signal: make(chan struct{}, 1)} }

// sweepStats counts sweeps and what they answered.
type sweepStats struct{ sweeps, answered uint64 }

// Stats returns the sweeper's counts.
func (s *sweeper) Stats() sweepStats {
	return sweepStats{sweeps: s.sweeps.Load(), answered: s.answered.Load()}
}

func (s *sweeper) request() {
	select {
	case s.signal <- struct{}{}:
	default: // a sweep is pending already: it will see these too
	}
}

// overflowed is the listener's overflow callback.
func (s *sweeper) overflowed() {
	s.overflow.Store(true)
	s.request()
}

// newLease is the responder's Sweep callback.
func (s *sweeper) newLease() { s.request() }

func (s *sweeper) run(ctx context.Context, responders []*miss.Responder, log *zap.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.signal:
		}
		overflow := s.overflow.Swap(false)
		start := time.Now()
		total, sweeps := 0, 0
		for ctx.Err() == nil {
			n, err := sweepAll(responders)
			sweeps++
			total += n
			s.sweeps.Add(1)
			s.answered.Add(uint64(n))
			if err != nil {
				log.Warn("answering pending addresses failed in part", zap.Int("answered", n), zap.Error(err))
			}
			if n == 0 || !overflow {
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
		switch {
		case overflow:
			log.Info("miss socket overflowed; answered the addresses still pending",
				zap.Int("answered", total), zap.Int("sweeps", sweeps), zap.Duration("took", time.Since(start)))
		case total > 0:
			log.Info("a new lease appeared; answered the addresses peers were waiting on", zap.Int("answered", total))
		}
	}
}

// sweepAll sweeps every responder (one per device) and returns how many
// addresses they answered in all.
func sweepAll(responders []*miss.Responder) (int, error) {
	total := 0
	var errs []error
	for _, r := range responders {
		n, err := r.Sweep()
		total += n
		if err != nil {
			errs = append(errs, err)
		}
	}
	return total, errors.Join(errs...)
}
