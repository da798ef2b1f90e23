package agent

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/vtepd/vtepd/fabric"
	"github.com/vtepd/vtepd/miss"
	"go.uber.org/zap"
)

// DefaultIdleTimeout is how long a peer may go without a packet sent to it
// before its entries go: long enough that a quiet connection keeps its
// entries across minutes of silence, short enough that a host's kernel
// state follows the peers it talks to now.
const DefaultIdleTimeout = 5 * time.Minute

// expiry removes the entries of idle peers (miss.Responder.ExpireIdle) every
// interval: a quarter of the idle time, so that an entry outlives its last
// use by at most a quarter more, and at most 30 s, so that counts stay
// fresh.
type expiry struct {
	idle time.Duration
	log  *zap.Logger

	peers, entries atomic.Uint64
}

func (e *expiry) interval() time.Duration {
	return min(max(e.idle/4, 100*time.Millisecond), 30*time.Second)
}

func (e *expiry) run(ctx context.Context, r *miss.Responder) {
	tick := time.NewTicker(e.interval())
	defer tick.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		res, err := r.ExpireIdle(e.idle)
		e.peers.Add(uint64(res.Peers))
		e.entries.Add(uint64(res.Entries))
		switch {
		case err != nil && !failing:
			e.log.Warn("removing idle peers' entries failed; retrying", zap.Error(err), zap.Duration("every", e.interval()))
		case err == nil && failing:
			e.log.Info("removing idle peers' entries works again")
		}
		failing = err != nil
		if res.Peers > 0 {
			e.log.Info("removed the entries of idle peers", zap.Int("peers", res.Peers), zap.Int("entries", res.Entries),
				zap.Duration("idle_for", e.idle))
		}
	}
}

// expiryStats counts what expiry removed.
type expiryStats struct{ peers, entries uint64 }

// Stats returns the counts.
func (e *expiry) Stats() expiryStats {
	return expiryStats{peers: e.peers.Load(), entries: e.entries.Load()}
}

// neighbourLimit is the limit of PERMANENT neighbour entries of a family's
// device when none is configured: the kernel's own table limit of that
// family (net.ipv4.neigh.default.gc_thresh3, or net.ipv6's), where this
// namespace can read it (the root namespace), else the kernel's default;
// the error says why it could not be read.
func neighbourLimit(configured int, ipv6 bool) (int, error) {
	if configured > 0 {
		return configured, nil
	}
	read := fabric.NeighbourTableLimit
	if ipv6 {
		read = fabric.NeighbourTableLimit6
	}
	n, err := read()
	if err != nil || n <= 0 {
		return miss.DefaultNeighbourLimit, err
	}
	return n, nil
}
