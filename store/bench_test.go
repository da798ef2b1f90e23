package store

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"runtime/metrics"
	"slices"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// The benchmarks here run against an etcd in this process, on loopback.
// They only run with -bench; each takes well under a minute:
//
//	go test -run XXX -bench 'EventToTable|Sync50k' ./store/

// seedLeases writes bigLease(1) to bigLease(n) under testPrefix, in
// transactions of 128 puts (etcd's default --max-txn-ops).
func seedLeases(tb testing.TB, c *clientv3.Client, n int) {
	tb.Helper()
	ctx := testCtx(tb)
	ops := make([]clientv3.Op, 0, 128)
	flush := func() {
		if len(ops) == 0 {
			return
		}
		if _, err := c.Txn(ctx).Then(ops...).Commit(); err != nil {
			tb.Fatalf("seed: %v", err)
		}
		ops = ops[:0]
	}
	for i := 1; i <= n; i++ {
		l := bigLease(i)
		ops = append(ops, clientv3.OpPut(l.Key, string(l.Value())))
		if len(ops) == cap(ops) {
			flush()
		}
	}
	flush()
}

// syncTable starts syncing a new table of bigConfig with c and waits until
// it holds its list. The sync stops when the benchmark ends, or when stop is
// called.
func syncTable(tb testing.TB, c *clientv3.Client, observe func(Change)) (t *Table, stop func()) {
	tb.Helper()
	t = NewTable(bigConfig())
	if observe != nil {
		t.OnChange(observe)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		t.Sync(ctx, c, testPrefix, zap.NewNop())
	}()
	stop = func() {
		cancel()
		<-done
	}
	tb.Cleanup(stop)
	select {
	case <-t.Synced():
	case <-time.After(50 * time.Second):
		tb.Fatal("the table did not sync within 50s")
	}
	return t, stop
}

type observed struct {
	key string
	rev int64
	at  time.Time
}

// BenchmarkEventToTable measures how long after a Put returns the table's
// observers see it: etcd's watch, the sync's parsing and the table's update.
// The table holds 50,000 leases; each put changes one of them. Reported, in
// milliseconds: the 50th and 99th percentiles (p50-ms, p99-ms) and the
// maximum. On loopback the watch often delivers before the Put's own
// response: such a change counts as 0, and early-% says how many there
// were. sent-p50-ms and sent-p99-ms measure from when the Put was sent.
func BenchmarkEventToTable(b *testing.B) {
	const n = 50000
	c := startEtcd(b)
	seedLeases(b, c, n)
	seen := make(chan observed, 1<<16)
	syncTable(b, c, func(ch Change) {
		if ch.New != nil {
			seen <- observed{ch.New.Key, ch.New.ModRevision, time.Now()}
		}
	})
	ctx := testCtx(b)
	var lat, sent []time.Duration
	early := 0
	i := 0
	for b.Loop() {
		i++
		l := bigLease(1 + i%n)
		l.PublicIP = netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
		start := time.Now()
		resp, err := c.Put(ctx, l.Key, string(l.Value()))
		returned := time.Now()
		if err != nil {
			b.Fatal(err)
		}
		for {
			var o observed
			select {
			case o = <-seen:
			case <-time.After(10 * time.Second):
				b.Fatalf("put %d of %s not seen within 10s", i, l.Key)
			}
			if o.key == l.Key && o.rev == resp.Header.Revision {
				if o.at.Before(returned) {
					early++
				}
				lat = append(lat, max(0, o.at.Sub(returned)))
				sent = append(sent, o.at.Sub(start))
				break
			}
		}
	}
	slices.Sort(lat)
	slices.Sort(sent)
	b.ReportMetric(ms(percentile(lat, 50)), "p50-ms")
	b.ReportMetric(ms(percentile(lat, 99)), "p99-ms")
	b.ReportMetric(ms(lat[len(lat)-1]), "max-ms")
	b.ReportMetric(100*float64(early)/float64(len(lat)), "early-%")
	b.ReportMetric(ms(percentile(sent, 50)), "sent-p50-ms")
	b.ReportMetric(ms(percentile(sent, 99)), "sent-p99-ms")
}

// BenchmarkSync50k measures how long Table.Sync takes to load 50,000 leases
// (from its start to Synced), and how much heap the loaded table holds: the
// heap in use with the table, less that once it is dropped, both after full
// collections. The leases are written before the timing starts.
//
// peak-MiB is the most the heap's objects grew during a load, over what
// they were before it: the list's pages, the parsed leases and the table,
// garbage not yet collected, and whatever the etcd in this process
// allocates to answer.
func BenchmarkSync50k(b *testing.B) {
	const n = 50000
	c := startEtcd(b)
	seedLeases(b, c, n)
	var load []time.Duration
	var peak uint64
	var last *Table
	for b.Loop() {
		fullGC()
		base := heapObjects()
		stopSampling := sampleMax(heapObjects, &peak, base)
		start := time.Now()
		t, stop := syncTable(b, c, nil)
		load = append(load, time.Since(start))
		stopSampling()
		stop()
		if t.Len() != n {
			b.Fatalf("the table holds %d leases, want %d", t.Len(), n)
		}
		last = t
	}
	b.StopTimer()
	slices.Sort(load)
	b.ReportMetric(ms(percentile(load, 50)), "load-ms")
	b.ReportMetric(float64(peak)/(1<<20), "peak-MiB")

	var with, without runtime.MemStats
	fullGC()
	runtime.ReadMemStats(&with)
	runtime.KeepAlive(last)
	last = nil
	fullGC()
	runtime.ReadMemStats(&without)
	b.ReportMetric(float64(int64(with.HeapAlloc)-int64(without.HeapAlloc))/(1<<20), "table-MiB")
}

// fullGC collects until what sync.Pools held is gone too (they keep it
// through one collection): the buffers the list left in gRPC's pools are
// not the table's.
func fullGC() {
	for range 3 {
		runtime.GC()
	}
}

// heapObjects is the heap memory occupied by objects, live or not yet
// collected.
func heapObjects() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// sampleMax samples f every millisecond until the returned stop is called,
// and raises *peak to the most it was over base.
func sampleMax(f func() uint64, peak *uint64, base uint64) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			if v := f(); v > base && v-base > *peak {
				*peak = v - base
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	return func() {
		close(done)
		<-finished
	}
}

func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, len(sorted)*p/100)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// TestSeedLeases checks what the benchmarks build on: seeded leases are
// valid and all reach a synced table.
func TestSeedLeases(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	seedLeases(t, c, 300)
	tb, _ := syncTable(t, c, nil)
	if tb.Len() != 300 || tb.Stats().Invalid != 0 {
		t.Fatalf("Stats = %+v", tb.Stats())
	}
	for _, i := range []int{1, 128, 129, 300} {
		want := bigLease(i)
		got, ok := tb.LookupIP(want.Subnet.Addr().Next())
		if !ok || got.Key != want.Key || !got.SameTarget(want) {
			t.Errorf("lease %d: %s, %v", i, fmt.Sprint(got), ok)
		}
	}
}
