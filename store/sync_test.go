package store

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sync/errgroup"
)

// recorder is an OnChange observer that keeps what it saw.
type recorder struct {
	mu      sync.Mutex
	changes []Change
}

func (r *recorder) observe(c Change) {
	r.mu.Lock()
	defer r.mu.Unlock()
	// Keep copies: the check is on what the observer was told.
	var cp Change
	if c.Old != nil {
		o := *c.Old
		cp.Old = &o
	}
	if c.New != nil {
		n := *c.New
		cp.New = &n
	}
	r.changes = append(r.changes, cp)
}

func (r *recorder) all() []Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.changes)
}

func (r *recorder) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.changes)
}

// since returns the changes after the first n.
func (r *recorder) since(n int) []Change { return r.all()[n:] }

// startSync runs what tb.Sync runs until the returned stop is called; stop returns what
// Sync returned.
func startSync(t *testing.T, tb *Table, c *clientv3.Client, log *zap.Logger) (stop func() error) {
	t.Helper()
	return startSyncPaged(t, tb, c, log, listPageSize)
}

// startSyncPaged is startSync with lists read pageSize keys a page: what
// Sync does, with the page size its own.
func startSyncPaged(t *testing.T, tb *Table, c *clientv3.Client, log *zap.Logger, pageSize int64) (stop func() error) {
	t.Helper()
	s := newSyncer(tb, c, testPrefix, log)
	s.pageSize = pageSize
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				err = errors.New("Sync did not return within 10s of its context being canceled")
			}
		})
		return err
	}
	t.Cleanup(func() { stop() })
	return stop
}

func waitSynced(t *testing.T, tb *Table) {
	t.Helper()
	select {
	case <-tb.Synced():
	case <-time.After(10 * time.Second):
		t.Fatal("table not synced within 10s")
	}
}

// putLease writes l's value at l.Key and returns l with the revisions etcd
// gave it.
func putLease(t *testing.T, c *clientv3.Client, l Lease, opts ...clientv3.OpOption) Lease {
	t.Helper()
	mustPut(t, c, l.Key, string(l.Value()), opts...)
	return readLease(t, c, l.Key)
}

// readLease reads a lease back from etcd, with its revisions.
func readLease(t *testing.T, c *clientv3.Client, key string) Lease {
	t.Helper()
	resp := mustGet(t, c, key)
	if len(resp.Kvs) != 1 {
		t.Fatalf("%s is not in etcd", key)
	}
	kv := resp.Kvs[0]
	l, err := ParseLease(strings.TrimPrefix(key, testSubnetsPrefix), kv.Value)
	if err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	l.Key, l.CreateRevision, l.ModRevision, l.EtcdLease = key, kv.CreateRevision, kv.ModRevision, kv.Lease
	return l
}

// waitTable waits until the table holds exactly want.
func waitTable(t *testing.T, tb *Table, timeout time.Duration, want ...Lease) {
	t.Helper()
	want = sortedBySubnet(want)
	deadline := time.Now().Add(timeout)
	for {
		got := tb.Leases()
		if slices.Equal(got, want) {
			checkInvariants(t, tb)
			return
		}
		if time.Now().After(deadline) {
			var gs, ws []string
			for i := range got {
				gs = append(gs, fmtLease(&got[i]))
			}
			for i := range want {
				ws = append(ws, fmtLease(&want[i]))
			}
			if len(gs) > 20 || len(ws) > 20 {
				t.Fatalf("after %v the table holds %d leases, want %d", timeout, len(gs), len(ws))
			}
			t.Fatalf("after %v the table holds:\n  %s\nwant:\n  %s", timeout, strings.Join(gs, "\n  "), strings.Join(ws, "\n  "))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSyncListThenWatch(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	ctx := testCtx(t)
	grant, err := c.Grant(ctx, 600)
	if err != nil {
		t.Fatal(err)
	}
	a := putLease(t, c, mkLease("10.5.1.0/24", 1, 0), clientv3.WithLease(grant.ID))
	b := putLease(t, c, mkLease("10.5.2.0/24", 2, 0))
	mustPut(t, c, testSubnetsPrefix+"10.5.3.0-24", "not json")
	mustPut(t, c, testSubnetsPrefix+"10.5.4.0-24/extra", string(mkLease("10.5.4.0/24", 4, 0).Value()))
	mustPut(t, c, testSubnetsPrefix+"garbage", string(mkLease("10.5.5.0/24", 5, 0).Value()))
	// Below a key that would parse: still not a lease.
	mustPut(t, c, testSubnetsPrefix+"10.5.10.0-24&fd00::-64/extra", string(mkLease("10.5.10.0/24", 10, 0).Value()))
	// Not under the subnets prefix: not leases, not even invalid ones.
	mustPut(t, c, ConfigKey(testPrefix), `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`)
	mustPut(t, c, "/other/network/subnets/10.5.6.0-24", string(mkLease("10.5.6.0/24", 6, 0).Value()))
	mustPut(t, c, testPrefix+"/subnetsX/10.5.7.0-24", string(mkLease("10.5.7.0/24", 7, 0).Value()))

	tb := NewTable(testConfig())
	rec := &recorder{}
	tb.OnChange(rec.observe)
	core, logs := observer.New(zapcore.DebugLevel)
	stop := startSync(t, tb, c, zap.New(core))
	waitSynced(t, tb)

	// Synced means the list is in the table: no waiting needed.
	expectAdmitted(t, tb, a, b)
	if a.EtcdLease != int64(grant.ID) {
		t.Errorf("lease A read back with etcd lease %x, want %x", a.EtcdLease, grant.ID)
	}
	if got, _ := tb.LookupKey(a.Key); got.EtcdLease != int64(grant.ID) || got.CreateRevision == 0 || got.ModRevision != got.CreateRevision {
		t.Errorf("table's lease A = %s", fmtLease(&got))
	}
	expectChangeSet(t, rec.all(), added(a), added(b))
	if s := tb.Stats(); s.Invalid != 4 || s.Leases != 2 || s.Rejected != 0 || s.Relists != 0 {
		t.Errorf("Stats = %+v, want 2 leases and 4 invalid", s)
	}
	var warned []string
	for _, e := range logs.FilterMessage("skipping invalid lease").All() {
		warned = append(warned, e.ContextMap()["key"].(string))
	}
	slices.Sort(warned)
	if want := []string{testSubnetsPrefix + "10.5.10.0-24&fd00::-64/extra", testSubnetsPrefix + "10.5.3.0-24",
		testSubnetsPrefix + "10.5.4.0-24/extra", testSubnetsPrefix + "garbage"}; !slices.Equal(warned, want) {
		t.Errorf("warned about %v, want %v", warned, want)
	}

	// The watch: an addition, an update, a removal.
	n := rec.len()
	cl := putLease(t, c, mkLease("10.5.8.0/24", 8, 0))
	waitTable(t, tb, 10*time.Second, a, b, cl)
	b2 := mkLease("10.5.2.0/24", 2, 0)
	b2.VtepMAC = MAC{0x02, 0, 0, 0, 0, 0x22}
	b2 = putLease(t, c, b2)
	if b2.CreateRevision != b.CreateRevision || b2.ModRevision <= b.ModRevision {
		t.Fatalf("etcd revisions of the update: %s after %s", fmtLease(&b2), fmtLease(&b))
	}
	waitTable(t, tb, 10*time.Second, a, b2, cl)
	if _, ok := tb.LookupMAC(b.VtepMAC); ok {
		t.Error("LookupMAC finds B's old MAC")
	}
	if got, ok := tb.LookupMAC(b2.VtepMAC); !ok || got != b2 {
		t.Errorf("LookupMAC(B's new MAC) = %s, %v", fmtLease(&got), ok)
	}
	mustDelete(t, c, a.Key)
	waitTable(t, tb, 10*time.Second, b2, cl)
	if _, ok := tb.LookupIP(netip.MustParseAddr("10.5.1.1")); ok {
		t.Error("LookupIP finds the deleted lease")
	}
	expectChanges(t, rec.since(n), added(cl), updated(b, b2), removed(a))

	if err := stop(); !errors.Is(err, context.Canceled) {
		t.Errorf("Sync returned %v after cancel, want context.Canceled", err)
	}
	// Stopped: the table keeps answering from what it holds.
	mustDelete(t, c, cl.Key)
	if got, ok := tb.LookupKey(cl.Key); !ok || got != cl {
		t.Error("a stopped table lost a lease")
	}
}

func TestSyncInvalidValues(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	tb := NewTable(testConfig())
	rec := &recorder{}
	tb.OnChange(rec.observe)
	core, logs := observer.New(zapcore.DebugLevel)
	startSync(t, tb, c, zap.New(core))
	waitSynced(t, tb)

	invalid := func(n uint64) func() bool { return func() bool { return tb.Stats().Invalid == n } }
	x := testSubnetsPrefix + "10.5.3.0-24"
	mustPut(t, c, x, `{"PublicIP":"203.0.113.3","BackendType":"vxlan"}`)
	eventually(t, 10*time.Second, invalid(1), "invalid = %d, want 1", tb.Stats().Invalid)

	v := putLease(t, c, mkLease("10.5.1.0/24", 1, 0))
	waitTable(t, tb, 10*time.Second, v)
	if s := tb.Stats(); s.Invalid != 1 {
		t.Errorf("Invalid = %d after a valid lease, want 1", s.Invalid)
	}

	// The same bad value written again is a new revision: one more.
	mustPut(t, c, x, `{"PublicIP":"203.0.113.3","BackendType":"vxlan"}`)
	eventually(t, 10*time.Second, invalid(2), "invalid = %d, want 2", tb.Stats().Invalid)

	// A valid lease turned invalid is forgotten...
	n := rec.len()
	bad := mkLease("10.5.1.0/24", 1, 0)
	bad.VtepMAC = MAC{0x01, 0, 0x5e, 0, 0, 1}
	mustPut(t, c, v.Key, string(bad.Value()))
	waitTable(t, tb, 10*time.Second)
	if s := tb.Stats(); s.Invalid != 3 {
		t.Errorf("Invalid = %d, want 3", s.Invalid)
	}
	// ... and its conflicts with it go: a lease overlapping it is free now.
	w := putLease(t, c, mkLease("10.5.1.0/25", 9, 0))
	waitTable(t, tb, 10*time.Second, w)
	mustDelete(t, c, w.Key)
	waitTable(t, tb, 10*time.Second)
	// ... and admitted again when fixed.
	v2 := putLease(t, c, mkLease("10.5.1.0/24", 1, 0))
	waitTable(t, tb, 10*time.Second, v2)
	expectChanges(t, rec.since(n), removed(v), added(w), removed(w), added(v2))

	// Valid JSON that does not fit the network: outside it, another VNI,
	// another backend.
	outside := mkLease("10.6.1.0/24", 6, 0)
	mustPut(t, c, outside.Key, string(outside.Value()))
	eventually(t, 10*time.Second, invalid(4), "invalid = %d, want 4", tb.Stats().Invalid)
	vni := mkLease("10.5.7.0/24", 7, 0)
	vni.VNI = 2
	mustPut(t, c, vni.Key, string(vni.Value()))
	eventually(t, 10*time.Second, invalid(5), "invalid = %d, want 5", tb.Stats().Invalid)
	mustPut(t, c, testSubnetsPrefix+"10.5.8.0-24", `{"PublicIP":"203.0.113.8","BackendType":"udp"}`)
	eventually(t, 10*time.Second, invalid(6), "invalid = %d, want 6", tb.Stats().Invalid)

	// Deleting a bad key is not another bad value.
	mustDelete(t, c, x)
	marker := putLease(t, c, mkLease("10.5.9.0/24", 10, 0))
	waitTable(t, tb, 10*time.Second, v2, marker)
	if s := tb.Stats(); s.Invalid != 6 {
		t.Errorf("Invalid = %d, want 6", s.Invalid)
	}
	if n := logs.FilterMessage("skipping invalid lease").Len(); n != 6 {
		t.Errorf("%d invalid-lease warnings, want 6", n)
	}
	for _, e := range logs.FilterMessage("skipping invalid lease").All() {
		m := e.ContextMap()
		if !strings.HasPrefix(m["key"].(string), testSubnetsPrefix) || m["mod_revision"].(int64) == 0 || m["error"] == "" {
			t.Errorf("warning lacks key, revision or error: %v", m)
		}
	}
}

func TestSyncObserversSeeChangesInOrder(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	first := putLease(t, c, mkLease("10.5.1.0/24", 1, 0))
	tb := NewTable(testConfig())
	rec1, rec2 := &recorder{}, &recorder{}
	tb.OnChange(rec1.observe)
	tb.OnChange(rec2.observe)
	startSync(t, tb, c, zap.NewNop())
	waitSynced(t, tb)

	// Feed the same leases, with etcd's revisions, to a reference table
	// driven directly: the observers must see exactly its changes.
	ref := NewTable(testConfig())
	want, _ := tput(ref, first)
	current := map[string]Lease{first.Key: first}
	for i := range 60 {
		var l Lease
		switch {
		case i%5 == 4 && len(current) > 0:
			keys := make([]string, 0, len(current))
			for k := range current {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			key := keys[i%len(keys)]
			mustDelete(t, c, key)
			delete(current, key)
			want = append(want, tremove(ref, key)...)
			continue
		case i%7 == 3:
			// Overlaps lease 1: waits until it goes.
			l = mkLease(fmt.Sprintf("10.5.1.%d/26", (i%4)*64), byte(100+i), 0)
		default:
			l = mkLease(fmt.Sprintf("10.5.%d.0/24", 2+i%9), byte(1+i%11), 0)
		}
		l = putLease(t, c, l)
		current[l.Key] = l
		ch, _ := tput(ref, l)
		want = append(want, ch...)
	}
	eventually(t, 10*time.Second, func() bool { return rec1.len() >= len(want) && rec2.len() >= len(want) },
		"observers saw %d and %d changes, want %d", rec1.len(), rec2.len(), len(want))
	expectChanges(t, rec1.all(), want...)
	expectChanges(t, rec2.all(), want...)
	if !slices.Equal(tb.Leases(), ref.Leases()) {
		t.Errorf("table holds %v, reference %v", tb.Leases(), ref.Leases())
	}
	if s := tb.Stats(); s.Conflicts == 0 {
		t.Errorf("Stats = %+v: the conflicts were not counted", s)
	}
}

func TestSyncCompactedWhileWatching(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	a := putLease(t, c, mkLease("10.5.1.0/24", 1, 0))
	b := putLease(t, c, mkLease("10.5.2.0/24", 2, 0))
	e := putLease(t, c, mkLease("10.5.3.0/24", 3, 0))
	d := putLease(t, c, mkLease("10.5.3.0/25", 4, 0)) // waits for e
	x := testSubnetsPrefix + "10.5.9.0-24"
	mustPut(t, c, x, "{}") // invalid

	var b2, cl Lease
	hw := &hookWatcher{Watcher: c.Watcher}
	hw.hook = func(call int, ctx context.Context, key string, opts ...clientv3.OpOption) clientv3.WatchChan {
		if call != 1 {
			return nil
		}
		// Between the list and the watch: a delete, an update and an
		// addition, then the history is compacted away.
		ctx = context.Background()
		if _, err := c.Delete(ctx, a.Key); err != nil {
			t.Error(err)
		}
		nb := mkLease("10.5.2.0/24", 2, 0)
		nb.PublicIP = netip.MustParseAddr("198.51.100.2")
		if _, err := c.Put(ctx, nb.Key, string(nb.Value())); err != nil {
			t.Error(err)
		}
		nc := mkLease("10.5.4.0/24", 5, 0)
		if _, err := c.Put(ctx, nc.Key, string(nc.Value())); err != nil {
			t.Error(err)
		}
		resp, err := c.Get(ctx, "x")
		if err == nil {
			_, err = c.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical())
		}
		if err != nil {
			t.Error(err)
		}
		return nil
	}
	tb := NewTable(testConfig())
	rec := &recorder{}
	tb.OnChange(rec.observe)
	core, logs := observer.New(zapcore.DebugLevel)
	startSync(t, tb, withWatcher(c, hw), zap.New(core))
	waitSynced(t, tb)

	eventually(t, 10*time.Second, func() bool { return tb.Stats().Relists == 1 }, "no re-list after compaction: %+v", tb.Stats())
	b2 = readLease(t, c, b.Key)
	cl = readLease(t, c, testSubnetsPrefix+"10.5.4.0-24")
	waitTable(t, tb, 10*time.Second, b2, cl, e)

	changes := rec.all()
	if len(changes) < 3 {
		t.Fatalf("changes: %v", fmtChanges(changes))
	}
	expectChangeSet(t, changes[:3], added(a), added(b), added(e))
	// The re-list's difference: removal, update, addition, in that order.
	expectChanges(t, changes[3:], removed(a), updated(b, b2), added(cl))

	s := tb.Stats()
	if s.Invalid != 1 {
		t.Errorf("Invalid = %d: an unchanged bad value was counted again by the re-list", s.Invalid)
	}
	if s.Conflicts != 1 {
		t.Errorf("Conflicts = %d: an unchanged conflict was counted again by the re-list", s.Conflicts)
	}
	if s.Rejected != 1 || s.WatchRestarts < 1 {
		t.Errorf("Stats = %+v", s)
	}
	if n := logs.FilterMessage("lease watch fell behind etcd compaction; re-listing").Len(); n != 1 {
		t.Errorf("compaction logged %d times, want once", n)
	}
	if n := logs.FilterMessage("skipping invalid lease").Len(); n != 1 {
		t.Errorf("invalid lease logged %d times, want once", n)
	}

	// The watch goes on from the re-list.
	n := rec.len()
	mustDelete(t, c, e.Key)
	waitTable(t, tb, 10*time.Second, b2, cl, d)
	expectChanges(t, rec.since(n), removed(e), added(d))
}

func TestSyncRestartAfterCompaction(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	a := putLease(t, c, mkLease("10.5.1.0/24", 1, 0))
	b := putLease(t, c, mkLease("10.5.2.0/24", 2, 0))
	tb := NewTable(testConfig())
	rec := &recorder{}
	tb.OnChange(rec.observe)
	stop := startSync(t, tb, c, zap.NewNop())
	waitSynced(t, tb)
	waitTable(t, tb, 10*time.Second, a, b)
	if err := stop(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sync returned %v", err)
	}

	// While nobody watches: a lease deleted, one created and deleted, one
	// created; then the history is compacted.
	mustDelete(t, c, a.Key)
	tmp := putLease(t, c, mkLease("10.5.5.0/24", 5, 0))
	mustDelete(t, c, tmp.Key)
	cl := putLease(t, c, mkLease("10.5.3.0/24", 3, 0))
	compactAll(t, c)
	if got, ok := tb.LookupKey(a.Key); !ok || got != a {
		t.Fatal("a stopped table changed")
	}

	n := rec.len()
	startSync(t, tb, c, zap.NewNop())
	waitTable(t, tb, 10*time.Second, b, cl)
	expectChanges(t, rec.since(n), removed(a), added(cl))
	if s := tb.Stats(); s.Leases != 2 {
		t.Errorf("Stats = %+v", s)
	}
}

// TestSyncResumesAfterLastEvent breaks a watch that is catching up through
// more than 1000 revisions. etcd sends such a watch its events in batches
// of 1000 revisions, each batch headed by the store's current revision; a
// resume must start after the last event received, not after the header's
// revision, or the events of the batches not yet sent are lost.
func TestSyncResumesAfterLastEvent(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	first := putLease(t, c, mkLease("10.5.1.0/24", 1, 0))
	cfg := testConfig()
	cfg.Network = netip.MustParsePrefix("10.0.0.0/8")
	const n = 1200
	var want []Lease
	hw := &hookWatcher{Watcher: c.Watcher}
	hw.hook = func(call int, ctx context.Context, key string, opts ...clientv3.OpOption) clientv3.WatchChan {
		if call != 1 {
			return nil
		}
		var g errgroup.Group
		g.SetLimit(8)
		for i := range n {
			g.Go(func() error {
				l := mkLease(netip.PrefixFrom(addrFrom(10<<24|64<<16|uint32(i)<<8), 24).String(), 0, 0)
				l.VtepMAC = MAC{0x02, 0x42, 0, 0, byte(i >> 8), byte(i)}
				_, err := c.Put(context.Background(), l.Key, string(l.Value()))
				return err
			})
		}
		if err := g.Wait(); err != nil {
			t.Error(err)
		}
		// The first response, up to 1000 revisions, arrives; then the
		// connection breaks.
		return cutAfterFirstEvents(hw.Watcher, ctx, key, opts...)
	}
	tb := NewTable(cfg)
	startSync(t, tb, withWatcher(c, hw), zap.NewNop())
	waitSynced(t, tb)
	eventually(t, 15*time.Second, func() bool { return hw.Calls() >= 2 }, "the broken watch was not resumed")

	resp, err := c.Get(testCtx(t), testSubnetsPrefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != n+1 {
		t.Fatalf("etcd holds %d leases, want %d", len(resp.Kvs), n+1)
	}
	for _, kv := range resp.Kvs {
		want = append(want, readLease(t, c, string(kv.Key)))
	}
	waitTable(t, tb, 15*time.Second, want...)
	if s := tb.Stats(); s.Relists != 0 || s.WatchRestarts < 1 {
		t.Errorf("Stats = %+v: want a resumed watch, not a re-list", s)
	}
	if l, ok := tb.LookupKey(first.Key); !ok || l != first {
		t.Errorf("first lease: %s, %v", fmtLease(&l), ok)
	}
}

// TestSyncWatchClosedResumes: a watch that ends without an error (the
// channel closes) is resumed from the list's revision, so a write between the
// list and the resumed watch is not lost, and nothing is re-listed.
func TestSyncWatchClosedResumes(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	a := putLease(t, c, mkLease("10.5.1.0/24", 1, 0))
	hw := &hookWatcher{Watcher: c.Watcher}
	written := make(chan struct{})
	hw.hook = func(call int, ctx context.Context, key string, opts ...clientv3.OpOption) clientv3.WatchChan {
		if call != 1 {
			return nil
		}
		l := mkLease("10.5.2.0/24", 2, 0)
		if _, err := c.Put(context.Background(), l.Key, string(l.Value())); err != nil {
			t.Error(err)
		}
		close(written)
		ch := make(chan clientv3.WatchResponse)
		close(ch)
		return ch
	}
	tb := NewTable(testConfig())
	core, logs := observer.New(zapcore.DebugLevel)
	startSync(t, tb, withWatcher(c, hw), zap.New(core))
	waitSynced(t, tb)
	select {
	case <-written:
	case <-time.After(10 * time.Second):
		t.Fatal("Sync did not watch")
	}
	b := readLease(t, c, testSubnetsPrefix+"10.5.2.0-24")
	waitTable(t, tb, 10*time.Second, a, b)
	if s := tb.Stats(); s.Relists != 0 || s.WatchRestarts != 1 {
		t.Errorf("Stats = %+v, want one watch restart and no re-list", s)
	}
	if n := logs.FilterMessage("lease watch ended; resuming").Len(); n != 1 {
		t.Errorf("watch end logged %d times", n)
	}
}

// TestSyncWatchingTracksEtcd: Stats().Watching says whether the watch
// delivers, which is what health reports: true once synced, false soon after
// etcd goes away, with the time it went.
func TestSyncWatchingTracksEtcd(t *testing.T) {
	t.Parallel()
	stopEtcd, c := startStoppableEtcd(t)
	putLease(t, c, mkLease("10.5.1.0/24", 1, 0))
	tb := NewTable(testConfig())
	if st := tb.Stats(); st.Watching || !st.WatchDownSince.IsZero() {
		t.Errorf("before Sync: %+v", st)
	}
	core, logs := observer.New(zapcore.InfoLevel)
	startSync(t, tb, c, zap.New(core))
	waitSynced(t, tb)
	eventually(t, 5*time.Second, func() bool { return tb.Stats().Watching }, "not watching after the sync")
	// A quiet cluster: etcd answers no progress request for a watch that
	// starts after its current revision. Still watching, at every one of
	// the three checks (one a second) of a quiet period: the quiet is the
	// scenario, so this one wait is a duration, sampled throughout.
	for quiet := time.Now(); time.Since(quiet) < 3*time.Second; time.Sleep(10 * time.Millisecond) {
		if st := tb.Stats(); !st.Watching {
			t.Fatalf("a quiet watch counted as down after %v: %+v", time.Since(quiet), st)
		}
	}
	// Stopped in the background: etcd's graceful stop waits up to its
	// request timeout (5 s) for the open watch, and the point is what the
	// table says meanwhile, once etcd has stopped serving.
	stopped := time.Now()
	go stopEtcd()
	eventually(t, 10*time.Second, func() bool { return !tb.Stats().Watching }, "still watching with etcd stopped")
	if since := tb.Stats().WatchDownSince; since.Before(stopped) || time.Since(since) > 10*time.Second {
		t.Errorf("WatchDownSince = %v, etcd stopped at %v", since, stopped)
	}
	if _, ok := tb.LookupKey(testSubnetsPrefix + "10.5.1.0-24"); !ok {
		t.Errorf("the table forgot its lease when etcd went away")
	}
	// Said once, however long it lasts; start-up before the first watch
	// was no outage.
	time.Sleep(1500 * time.Millisecond) // at least one more check (one a second) while etcd is down
	if n := logs.FilterMessageSnippet("lost the etcd watch").Len(); n != 1 {
		t.Errorf("%d log lines about the lost watch, want 1: %v", n, logs.All())
	}
}

func sortedBySubnet(leases []Lease) []Lease {
	leases = slices.Clone(leases)
	slices.SortFunc(leases, compareLeases)
	return leases
}

// TestSyncListsInPages: a list reads the prefix in pages, every page at the
// first page's revision. Writes between two pages are not in the list, which
// is exactly what etcd held at that revision; the watch from it brings them.
func TestSyncListsInPages(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	var leases []Lease
	for i := 1; i <= 10; i++ {
		leases = append(leases, putLease(t, c, mkLease(fmt.Sprintf("10.5.%d.0/24", i), byte(i), 0)))
	}
	mustPut(t, c, testSubnetsPrefix+"10.5.4.0-24/extra", string(mkLease("10.5.4.0/24", 4, 0).Value()))
	mustPut(t, c, testSubnetsPrefix+"garbage", "{}")
	// 12 keys, 4 pages of 3 in key order:
	//   10.5.1.0-24 10.5.10.0-24 10.5.2.0-24 | 10.5.3.0-24 10.5.4.0-24 10.5.4.0-24/extra |
	//   10.5.5.0-24 10.5.6.0-24 10.5.7.0-24 | 10.5.8.0-24 10.5.9.0-24 garbage
	newL := mkLease("10.5.77.0/24", 77, 0) // between 10.5.7.0-24 and 10.5.8.0-24
	gone := leases[8]                      // 10.5.9.0/24
	moved := mkLease("10.5.8.0/24", 8, 0)
	moved.PublicIP = netip.MustParseAddr("198.51.100.8")

	kv := &hookKV{KV: c.KV}
	kv.afterGet = func(call int, resp *clientv3.GetResponse, err error) {
		if call != 1 || err != nil {
			return
		}
		ctx := context.Background()
		if _, err := c.Put(ctx, newL.Key, string(newL.Value())); err != nil {
			t.Error(err)
		}
		if _, err := c.Delete(ctx, gone.Key); err != nil {
			t.Error(err)
		}
		if _, err := c.Put(ctx, moved.Key, string(moved.Value())); err != nil {
			t.Error(err)
		}
	}
	tb := NewTable(testConfig())
	// What the table holds when the watch starts: the list's work.
	listed := make(chan []Lease, 1)
	hw := &hookWatcher{Watcher: c.Watcher}
	hw.hook = func(call int, ctx context.Context, key string, opts ...clientv3.OpOption) clientv3.WatchChan {
		if call == 1 {
			listed <- tb.Leases()
		}
		return nil
	}
	rec := &recorder{}
	tb.OnChange(rec.observe)
	core, logs := observer.New(zapcore.DebugLevel)
	startSyncPaged(t, tb, withKV(c, kv, hw), zap.New(core), 3)
	waitSynced(t, tb)
	select {
	case got := <-listed:
		if want := sortedBySubnet(leases); !slices.Equal(got, want) {
			t.Errorf("listed:\n  %v\nwant etcd's leases at the first page's revision:\n  %v", got, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no watch after the list")
	}
	gets := kv.Gets()
	if len(gets) != 4 || gets[0] != testSubnetsPrefix ||
		gets[1] != testSubnetsPrefix+"10.5.2.0-24\x00" || gets[3] != testSubnetsPrefix+"10.5.7.0-24\x00" {
		t.Errorf("pages read from %q, want 4 pages of 3 keys", gets)
	}

	// The watch brings the writes made between the pages, in their order.
	newL = readLease(t, c, newL.Key)
	moved = readLease(t, c, moved.Key)
	want := append(slices.Delete(slices.Clone(leases), 7, 9), moved, newL)
	waitTable(t, tb, 10*time.Second, want...)
	changes := rec.all()
	if len(changes) < len(leases) {
		t.Fatalf("changes: %v", fmtChanges(changes))
	}
	var adds []Change
	for _, l := range leases {
		adds = append(adds, Change{New: &l})
	}
	expectChangeSet(t, changes[:len(leases)], adds...)
	expectChanges(t, changes[len(leases):], added(newL), removed(gone), updated(leases[7], moved))
	if s := tb.Stats(); s.Invalid != 2 || s.Relists != 0 {
		t.Errorf("Stats = %+v, want 2 invalid and no re-list", s)
	}
	if n := logs.FilterMessage("skipping invalid lease").Len(); n != 2 {
		t.Errorf("%d invalid-lease warnings, want 2", n)
	}
}

// TestSyncListStartsOverAfterCompaction: when etcd compacts the revision a
// list is reading at before its last page, the list starts over at the
// current revision; after listAttempts of that, Sync retries after a
// backoff.
func TestSyncListStartsOverAfterCompaction(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	var leases []Lease
	for i := 1; i <= 5; i++ {
		leases = append(leases, putLease(t, c, mkLease(fmt.Sprintf("10.5.%d.0/24", i), byte(i), 0)))
	}
	kv := &hookKV{KV: c.KV}
	firstPages := 0 // written only by Sync's goroutine
	kv.afterGet = func(call int, resp *clientv3.GetResponse, err error) {
		if err != nil || len(resp.Kvs) == 0 || string(resp.Kvs[0].Key) != leases[0].Key {
			return
		}
		if firstPages++; firstPages > listAttempts {
			return
		}
		// A write, and its history compacted away before the next page.
		l := mkLease(fmt.Sprintf("10.5.%d.0/24", 100+firstPages), byte(100+firstPages), 0)
		ctx := context.Background()
		pr, err := c.Put(ctx, l.Key, string(l.Value()))
		if err == nil {
			_, err = c.Compact(ctx, pr.Header.Revision, clientv3.WithCompactPhysical())
		}
		if err != nil {
			t.Error(err)
		}
	}
	tb := NewTable(testConfig())
	listed := make(chan []Lease, 1)
	hw := &hookWatcher{Watcher: c.Watcher}
	hw.hook = func(call int, ctx context.Context, key string, opts ...clientv3.OpOption) clientv3.WatchChan {
		if call == 1 {
			listed <- tb.Leases()
		}
		return nil
	}
	core, logs := observer.New(zapcore.DebugLevel)
	startSyncPaged(t, tb, withKV(c, kv, hw), zap.New(core), 2)
	waitSynced(t, tb)

	// The list that succeeded came after every write: it has them all.
	resp, err := c.Get(testCtx(t), testSubnetsPrefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var want []Lease
	for _, kv := range resp.Kvs {
		want = append(want, readLease(t, c, string(kv.Key)))
	}
	if len(want) != 5+listAttempts {
		t.Fatalf("etcd holds %d leases", len(want))
	}
	select {
	case got := <-listed:
		if !slices.Equal(got, sortedBySubnet(want)) {
			t.Errorf("listed %d leases: %v\nwant %v", len(got), got, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no watch after the list")
	}
	if n := logs.FilterMessage("etcd compacted the lease list's revision between two pages; listing again").Len(); n != listAttempts-1 {
		t.Errorf("%d restarts logged, want %d", n, listAttempts-1)
	}
	failed := logs.FilterMessage("listing leases failed; retrying").All()
	if len(failed) != 1 || !strings.Contains(failed[0].ContextMap()["error"].(string), "compacted") {
		t.Errorf("list failures logged: %v", failed)
	}
	if s := tb.Stats(); s.Relists != 0 || s.Leases != len(want) {
		t.Errorf("Stats = %+v", s)
	}
}

// TestSyncCompactionIsNoOutage: a watch that delivered and then fell behind
// compaction (what a reconnection after an outage often meets: its resume
// revision was compacted meanwhile) re-lists without logging an outage of its
// own. Counting it logged one etcd outage as two (TestEtcdOutages, the
// second "outage" a quarter second long).
func TestSyncCompactionIsNoOutage(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	putLease(t, c, mkLease("10.5.1.0/24", 1, 0))
	compact := make(chan struct{})
	hw := &hookWatcher{Watcher: c.Watcher}
	hw.hook = func(call int, ctx context.Context, key string, opts ...clientv3.OpOption) clientv3.WatchChan {
		if call != 1 {
			return nil // the watch after the re-list is etcd's own
		}
		ch := make(chan clientv3.WatchResponse)
		go func() {
			for _, r := range []clientv3.WatchResponse{{Created: true}, {CompactRevision: 1}} {
				if r.CompactRevision != 0 {
					<-compact
				}
				select {
				case ch <- r:
				case <-ctx.Done():
					return
				}
			}
		}()
		return ch
	}
	tb := NewTable(testConfig())
	core, logs := observer.New(zapcore.InfoLevel)
	startSync(t, tb, withWatcher(c, hw), zap.New(core))
	waitSynced(t, tb)
	eventually(t, 5*time.Second, func() bool { return tb.Stats().Watching }, "not watching after the created notification")
	close(compact)
	eventually(t, 10*time.Second, func() bool { return tb.Stats().Relists == 1 && hw.Calls() >= 2 }, "no re-list after compaction: %+v", tb.Stats())
	eventually(t, 5*time.Second, func() bool { return tb.Stats().Watching }, "not watching after the re-list")
	if n := logs.FilterMessageSnippet("lost the etcd watch").Len(); n != 0 {
		t.Errorf("a compaction with etcd answering logged %d outages, want none: %v", n, logs.All())
	}
	if n := logs.FilterMessageSnippet("etcd watch of the leases is back").Len(); n != 0 {
		t.Errorf("%d outage ends logged, want none: %v", n, logs.All())
	}
	if n := logs.FilterMessageSnippet("fell behind etcd compaction").Len(); n != 1 {
		t.Errorf("re-list after compaction logged %d times, want 1", n)
	}
}
