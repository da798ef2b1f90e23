package agent

import (
	"net/netip"
	"sync"
	"time"

	"github.com/vtepd/vtepd/miss"
	"github.com/vtepd/vtepd/store"
)

// recentSize is how many misses /debug/misses remembers.
const recentSize = 512

// recentMiss is one entry of the recent-miss log.
type recentMiss struct {
	at      time.Time
	family  string
	kind    miss.Kind
	ip      netip.Addr
	mac     store.MAC
	hasMAC  bool
	state   uint16
	outcome miss.Outcome
	lease   store.Part
	latency time.Duration
	err     error
}

// recentMisses is a fixed ring of the last misses. Recording copies a few
// words under a mutex and allocates nothing, so it can sit on the miss path.
type recentMisses struct {
	mu   sync.Mutex
	ring [recentSize]recentMiss
	next int
	n    int
}

func (r *recentMisses) record(family string, m *miss.Miss, res miss.Result) {
	r.mu.Lock()
	r.ring[r.next] = recentMiss{
		at: m.Received, family: family, kind: m.Kind, ip: m.IP, mac: m.MAC, hasMAC: m.HasMAC, state: m.State,
		outcome: res.Outcome, lease: res.Lease, latency: res.Latency, err: res.Err,
	}
	r.next = (r.next + 1) % recentSize
	r.n = min(r.n+1, recentSize)
	r.mu.Unlock()
}

// last returns up to n misses, newest first.
func (r *recentMisses) last(n int) []recentMiss {
	r.mu.Lock()
	defer r.mu.Unlock()
	n = min(n, r.n)
	out := make([]recentMiss, 0, n)
	for i := 1; i <= n; i++ {
		out = append(out, r.ring[(r.next-i+recentSize)%recentSize])
	}
	return out
}
