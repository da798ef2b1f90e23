package agent

import (
	"net/netip"
	"testing"
	"time"

	"github.com/vtepd/vtepd/miss"
	"github.com/vtepd/vtepd/store"
)

// BenchmarkObserve is what metrics and the recent-miss log cost each miss.
func BenchmarkObserve(b *testing.B) {
	tel := newTelemetry("bench")
	observe := tel.observer(tel.addFamily("ipv4", deviceState{name: "flannel.1"}))
	m := &miss.Miss{Kind: miss.L3, IP: netip.MustParseAddr("10.5.2.7"), Received: time.Now()}
	res := miss.Result{Outcome: miss.Answered, Lease: store.Part{Subnet: netip.MustParsePrefix("10.5.2.0/24")}, Latency: 12 * time.Microsecond}
	b.ReportAllocs()
	for b.Loop() {
		observe(m, res)
	}
}

func TestObserveRecords(t *testing.T) {
	tel := newTelemetry("test")
	observe := tel.observer(tel.addFamily("ipv4", deviceState{name: "flannel.1"}))
	for i := range recentSize + 10 {
		m := &miss.Miss{Kind: miss.L3, IP: netip.AddrFrom4([4]byte{10, 5, byte(i >> 8), byte(i)}), Received: time.Now()}
		observe(m, miss.Result{Outcome: miss.NoLease, Latency: time.Duration(i) * time.Microsecond})
	}
	last := tel.recent.last(3)
	newest := recentSize + 9
	if len(last) != 3 || last[0].ip != netip.AddrFrom4([4]byte{10, 5, byte(newest >> 8), byte(newest)}) {
		t.Errorf("recent misses, newest first: %+v", last)
	}
	if n := len(tel.recent.last(10000)); n != recentSize {
		t.Errorf("the ring holds %d misses, want %d", n, recentSize)
	}
}
