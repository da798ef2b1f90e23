package store

import (
	"context"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// startEtcd starts a one-member etcd in this process, listening on loopback
// ports the kernel picks, and returns a client for it. Both are closed when
// the test ends.
func startEtcd(t testing.TB) *clientv3.Client {
	t.Helper()
	_, c := startStoppableEtcd(t)
	return c
}

// startStoppableEtcd is startEtcd that also returns a function stopping the
// server, for tests that take etcd away. It may be called more than once.
func startStoppableEtcd(t testing.TB) (stop func(), c *clientv3.Client) {
	t.Helper()
	cfg := embed.NewConfig()
	cfg.Name = "store-test"
	cfg.Dir = t.TempDir()
	cfg.LogLevel = "error"
	// etcd's errors go to stderr, except for the ones it logs while being
	// closed (listeners closing under their accept loops), which are noise.
	level := zap.NewAtomicLevelAt(zapcore.ErrorLevel)
	logCfg := zap.NewProductionConfig()
	logCfg.Level = level
	logCfg.Sampling = nil
	lg, err := logCfg.Build(zap.WrapCore(func(c zapcore.Core) zapcore.Core { return quietCore{c} }))
	if err != nil {
		t.Fatal(err)
	}
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(lg)
	cfg.UnsafeNoFsync = true
	// A fast heartbeat makes the single member its own leader quickly. The
	// minimum etcd lease TTL follows from it: 1.5 election timeouts, rounded
	// up to a second.
	cfg.TickMs, cfg.ElectionMs = 10, 100
	loopback := url.URL{Scheme: "http", Host: "127.0.0.1:0"}
	cfg.ListenClientUrls = []url.URL{loopback}
	cfg.AdvertiseClientUrls = []url.URL{loopback}
	cfg.ListenPeerUrls = []url.URL{loopback}
	cfg.AdvertisePeerUrls = []url.URL{loopback}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			level.SetLevel(zapcore.FatalLevel)
			e.Close()
		})
	}
	t.Cleanup(stop)
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		t.Fatalf("etcd failed: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("etcd not ready after 30s")
	}

	c, err = clientv3.New(clientv3.Config{
		Endpoints:   []string{e.Clients[0].Addr().String()},
		DialTimeout: 10 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return stop, c
}

// quietCore drops an error a new etcd member logs once at start because it
// has no term yet (harmless: the storage version is set a moment later).
type quietCore struct{ zapcore.Core }

func (c quietCore) With(f []zapcore.Field) zapcore.Core { return quietCore{c.Core.With(f)} }

func (c quietCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if e.Message == "failed to update storage version" {
		return ce
	}
	return c.Core.Check(e, ce)
}

// testCtx is a context that ends with the test, or after a generous limit so
// that a hung etcd call fails the test instead of the whole run.
func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls cond until it holds or timeout passes.
func eventually(t testing.TB, timeout time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: "+format, append([]any{timeout}, args...)...)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func mustPut(t testing.TB, c *clientv3.Client, key, value string, opts ...clientv3.OpOption) *clientv3.PutResponse {
	t.Helper()
	resp, err := c.Put(testCtx(t), key, value, opts...)
	if err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	return resp
}

func mustDelete(t testing.TB, c *clientv3.Client, key string) {
	t.Helper()
	resp, err := c.Delete(testCtx(t), key)
	if err != nil {
		t.Fatalf("delete %s: %v", key, err)
	}
	if resp.Deleted != 1 {
		t.Fatalf("delete %s: deleted %d keys", key, resp.Deleted)
	}
}

func mustGet(t testing.TB, c *clientv3.Client, key string) *clientv3.GetResponse {
	t.Helper()
	resp, err := c.Get(testCtx(t), key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	return resp
}

// compactAll compacts etcd's history up to its current revision.
func compactAll(t testing.TB, c *clientv3.Client) int64 {
	t.Helper()
	ctx := testCtx(t)
	resp, err := c.Get(ctx, "compact-probe")
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	rev := resp.Header.Revision
	if _, err := c.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("compact %d: %v", rev, err)
	}
	return rev
}

// hookWatcher wraps a real Watcher so that a test can act before a watch
// starts, or cut a watch short, the way a network failure would.
type hookWatcher struct {
	clientv3.Watcher
	mu    sync.Mutex
	calls int
	// hook, if set, is called for every Watch call (numbered from 1) and
	// may return a channel to use instead of the real watch.
	hook func(call int, ctx context.Context, key string, opts ...clientv3.OpOption) clientv3.WatchChan
}

func (w *hookWatcher) Watch(ctx context.Context, key string, opts ...clientv3.OpOption) clientv3.WatchChan {
	w.mu.Lock()
	w.calls++
	n := w.calls
	w.mu.Unlock()
	if w.hook != nil {
		if ch := w.hook(n, ctx, key, opts...); ch != nil {
			return ch
		}
	}
	return w.Watcher.Watch(ctx, key, opts...)
}

func (w *hookWatcher) Calls() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.calls
}

// withWatcher returns a client that uses c for everything but watches, which
// go through w.
func withWatcher(c *clientv3.Client, w clientv3.Watcher) *clientv3.Client {
	return &clientv3.Client{Cluster: c.Cluster, KV: c.KV, Lease: c.Lease, Watcher: w, Auth: c.Auth, Maintenance: c.Maintenance}
}

// withLease returns a client that uses c for everything but etcd leases,
// which go through l.
func withLease(c *clientv3.Client, l clientv3.Lease) *clientv3.Client {
	return &clientv3.Client{Cluster: c.Cluster, KV: c.KV, Lease: l, Watcher: c.Watcher, Auth: c.Auth, Maintenance: c.Maintenance}
}

// hookLease wraps a real Lease client so that a test can act right after a
// grant or right before a TTL query: the moments another host could write.
type hookLease struct {
	clientv3.Lease
	afterGrant, beforeTimeToLive func()
}

func (l *hookLease) Grant(ctx context.Context, ttl int64) (*clientv3.LeaseGrantResponse, error) {
	resp, err := l.Lease.Grant(ctx, ttl)
	if l.afterGrant != nil {
		l.afterGrant()
	}
	return resp, err
}

func (l *hookLease) TimeToLive(ctx context.Context, id clientv3.LeaseID, opts ...clientv3.LeaseOption) (*clientv3.LeaseTimeToLiveResponse, error) {
	if l.beforeTimeToLive != nil {
		l.beforeTimeToLive()
	}
	return l.Lease.TimeToLive(ctx, id, opts...)
}

// cutAfterFirstEvents watches like the real watcher but closes the channel
// right after the first response that carries events, as a watch broken by
// a lost connection would end.
func cutAfterFirstEvents(real clientv3.Watcher, ctx context.Context, key string, opts ...clientv3.OpOption) clientv3.WatchChan {
	ictx, cancel := context.WithCancel(ctx)
	in := real.Watch(ictx, key, opts...)
	out := make(chan clientv3.WatchResponse)
	go func() {
		defer close(out)
		defer func() {
			cancel()
			go func() {
				for range in {
				}
			}()
		}()
		for wr := range in {
			select {
			case out <- wr:
			case <-ctx.Done():
				return
			}
			if len(wr.Events) > 0 {
				return
			}
		}
	}()
	return out
}

// hookKV wraps a real KV so that a test can act after each Get returns:
// between the pages of a list.
type hookKV struct {
	clientv3.KV
	mu   sync.Mutex
	gets []string // the key each Get started from
	// afterGet, if set, is called after every Get (numbered from 1).
	afterGet func(call int, resp *clientv3.GetResponse, err error)
}

func (k *hookKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	resp, err := k.KV.Get(ctx, key, opts...)
	k.mu.Lock()
	k.gets = append(k.gets, key)
	n := len(k.gets)
	k.mu.Unlock()
	if k.afterGet != nil {
		k.afterGet(n, resp, err)
	}
	return resp, err
}

// Gets returns the key each Get so far started from.
func (k *hookKV) Gets() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.gets)
}

// withKV returns a client that uses c for everything but key-value calls,
// which go through kv, and watches, which go through w (c's if nil).
func withKV(c *clientv3.Client, kv clientv3.KV, w clientv3.Watcher) *clientv3.Client {
	if w == nil {
		w = c.Watcher
	}
	return &clientv3.Client{Cluster: c.Cluster, KV: kv, Lease: c.Lease, Watcher: w, Auth: c.Auth, Maintenance: c.Maintenance}
}
