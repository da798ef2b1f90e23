package store

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/connectivity"
)

// SubnetsPrefix is where leases live under an etcd prefix.
func SubnetsPrefix(prefix string) string { return strings.TrimSuffix(prefix, "/") + "/subnets/" }

// ConfigKey is where the network configuration lives under an etcd prefix.
func ConfigKey(prefix string) string { return strings.TrimSuffix(prefix, "/") + "/config" }

// Sync keeps the table equal to the leases under prefix in etcd until ctx is
// done: one list, then a watch from the list's revision. A watch that falls
// behind compaction re-lists and applies the difference, so a delete during
// the gap is not missed; any other watch failure resumes from the last
// revision seen, after a backoff. etcd being away is not an error: the table
// keeps answering from what it holds. Sync returns ctx.Err().
func (t *Table) Sync(ctx context.Context, c *clientv3.Client, prefix string, log *zap.Logger) error {
	return newSyncer(t, c, prefix, log).run(ctx)
}

// newSyncer is what Sync runs, lists read in pages of listPageSize keys.
// Tests that need small pages set the syncer's pageSize instead: a field,
// so that they can run in parallel.
func newSyncer(t *Table, c *clientv3.Client, prefix string, log *zap.Logger) *syncer {
	return &syncer{t: t, c: c, prefix: SubnetsPrefix(prefix), log: log, warned: make(map[string]int64), pageSize: listPageSize}
}

// listPageSize is how many keys one request of a list reads: about 1 MB of
// leases, where the whole prefix of 50,000 is 10 MB read and decoded at
// once. Smaller pages save little more (the parsed leases and the table
// outweigh a page) and cost etcd more: it counts the keys left in the range
// for every page, so a list costs it O(n²/page). With 50,000 leases, pages
// of 1000 took 460 ms to load, of 5000 290 ms, one Get 270 ms (BenchmarkSync50k).
// Tests make the pageSize of their syncer or OwnLease small.
const listPageSize = 5000

// listAttempts is how many times a list starts over when etcd compacts its
// revision between two pages, before it fails (and run retries it after a
// backoff).
const listAttempts = 5

type syncer struct {
	t        *Table
	c        *clientv3.Client
	prefix   string
	log      *zap.Logger
	pageSize int64
	// warned remembers the revision of the last warning per key, so that a
	// bad value is reported once per revision and not on every re-list.
	warned map[string]int64
}

func (s *syncer) run(ctx context.Context) error {
	bo := newBackoff(100*time.Millisecond, 10*time.Second)
	rev := int64(0) // last revision applied; 0 = need a list
	for {
		if rev == 0 {
			r, err := s.list(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				// A re-list after compaction that fails is where an
				// outage shows first: the watch that ended did not say so.
				s.setWatching(false)
				s.log.Warn("listing leases failed; retrying", zap.String("prefix", s.prefix), zap.Error(err), zap.Duration("backoff", bo.peek()))
				if !bo.wait(ctx) {
					return ctx.Err()
				}
				continue
			}
			rev = r
		}

		next, err := s.watch(ctx, rev)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if next > rev {
			bo.reset() // the watch made progress: etcd is healthy again
		}
		rev = next
		s.t.stats.watchRestarts.Add(1)
		if errors.Is(err, rpctypes.ErrCompacted) {
			s.t.stats.relists.Add(1)
			s.log.Warn("lease watch fell behind etcd compaction; re-listing", zap.Int64("revision", rev))
			rev = 0
			continue
		}
		s.log.Warn("lease watch ended; resuming", zap.Int64("from_revision", rev+1), zap.Error(err), zap.Duration("backoff", bo.peek()))
		if !bo.wait(ctx) {
			return ctx.Err()
		}
	}
}

// list replaces the table's contents with a fresh list and returns its
// revision.
func (s *syncer) list(ctx context.Context) (int64, error) {
	var leases []Lease
	var rev int64
	var err error
	for attempt := 1; ; attempt++ {
		leases, rev, err = s.listPages(ctx)
		if err == nil {
			break
		}
		if !errors.Is(err, rpctypes.ErrCompacted) || attempt == listAttempts || ctx.Err() != nil {
			return 0, fmt.Errorf("store: list %s: %w", s.prefix, err)
		}
		s.log.Warn("etcd compacted the lease list's revision between two pages; listing again", zap.Int64("revision", rev))
	}
	s.t.mu.Lock()
	changes, _ := s.t.replaceAll(leases)
	rejected := s.t.rejectedLeases()
	s.t.mu.Unlock()
	s.warnRejected(rejected)
	s.t.notify(changes)
	s.t.markSynced()
	s.log.Info("lease table loaded", zap.Int("leases", s.t.Len()), zap.Int("rejected", len(rejected)), zap.Int64("revision", rev))
	return rev, nil
}

// listPages reads every lease under the prefix, a page of s.pageSize keys at
// a time, and returns them with the revision they were read at (see
// rangePages). If etcd compacts the revision before the last page, the
// error is rpctypes.ErrCompacted.
func (s *syncer) listPages(ctx context.Context) ([]Lease, int64, error) {
	var leases []Lease
	// The keys warned about that are still there. The others are gone
	// (deleted while no watch saw it), and so are their warnings.
	listed := make(map[string]bool)
	rev, err := rangePages(ctx, s.c, s.prefix, s.pageSize, func(kv *mvccpb.KeyValue, count int64) {
		if leases == nil {
			leases = make([]Lease, 0, min(count, 1<<20))
		}
		if l, ok := s.parse(kv); ok {
			leases = append(leases, l)
		}
		if _, ok := s.warned[string(kv.Key)]; ok {
			listed[string(kv.Key)] = true
		}
	})
	if err != nil {
		return nil, rev, err
	}
	for key := range s.warned {
		if !listed[key] {
			delete(s.warned, key)
		}
	}
	return leases, rev, nil
}

// rangePages calls fn with every key under prefix, read a page of pageSize
// keys at a time, and returns the revision they were read at. The first
// page is read at etcd's current revision and the others at the same one,
// so the pages are one snapshot however etcd changes meanwhile, and no more
// than a page of etcd's response is in memory at once: with 50,000 leases,
// one response is 10 MB. count is how many keys the first page said the
// range holds.
func rangePages(ctx context.Context, c *clientv3.Client, prefix string, pageSize int64, fn func(kv *mvccpb.KeyValue, count int64)) (int64, error) {
	end := clientv3.GetPrefixRangeEnd(prefix)
	var rev, count int64
	for from := prefix; ; {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(pageSize)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := c.Get(ctx, from, opts...)
		if err != nil {
			return rev, err
		}
		if rev == 0 {
			rev, count = resp.Header.Revision, resp.Count
		}
		for _, kv := range resp.Kvs {
			fn(kv, count)
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return rev, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// watch applies events after rev until the watch fails, and returns the last
// revision applied with the failure.
func (s *syncer) watch(ctx context.Context, rev int64) (last int64, err error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// WithRequireLeader: a member cut off from its cluster ends the watch
	// instead of leaving it silently stale, so we move to a healthy member.
	// Progress notifications keep rev current on a quiet prefix, so a resume
	// after an outage starts from a revision etcd has not compacted yet.
	wch := s.c.Watch(clientv3.WithRequireLeader(wctx), s.prefix,
		clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithProgressNotify(), clientv3.WithCreatedNotify())
	// Whether the watch delivers: it was created (or delivered since), and
	// the client's connection is up. While etcd is unreachable the client
	// keeps the channel open and reconnects behind it, so an open channel
	// proves nothing; and etcd does not answer progress requests while the
	// watch's start revision is ahead of its own, which is every watch on a
	// quiet cluster, so silence proves nothing either.
	created := false
	defer func() {
		// A stop is no outage. Nor is a watch that fell behind
		// compaction: etcd answered, and the re-list that follows at once
		// is the catch-up. A reconnection after an outage often ends so
		// (the resume revision was compacted meanwhile), and counting it
		// logged one outage as two, the second a quarter second long.
		if ctx.Err() == nil && !errors.Is(err, rpctypes.ErrCompacted) {
			s.setWatching(false)
		}
	}()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		var wresp clientv3.WatchResponse
		var ok bool
		select {
		case <-tick.C:
			s.setWatching(created && connected(s.c))
			continue
		case wresp, ok = <-wch:
		}
		if !ok {
			return rev, errors.New("watch channel closed")
		}
		if err := wresp.Err(); err != nil {
			return rev, err
		}
		created = true
		s.setWatching(true)
		for _, ev := range wresp.Events {
			s.apply(ev)
		}
		// A watch catching up on history gets its events in batches of at
		// most 1000 revisions, each headed by etcd's current revision, not
		// by the batch's last: resuming after the header would lose the
		// batches not yet sent. The same holds for the notification that the
		// watch was created. Only a progress notification vouches for its
		// header revision.
		var r int64
		switch n := len(wresp.Events); {
		case n > 0:
			r = wresp.Events[n-1].Kv.ModRevision
		case wresp.IsProgressNotify():
			r = wresp.Header.Revision
		}
		if r > rev {
			rev = r
		}
	}
}

// setWatching records whether the watch delivers, and logs the start and
// the end of an outage, once each.
func (s *syncer) setWatching(up bool) {
	switch started, ended := s.t.setWatching(up); {
	case started:
		s.log.Warn("lost the etcd watch of the leases; answering misses from the leases held until it is back",
			zap.String("prefix", s.prefix), zap.Int("leases", s.t.Len()))
	case ended > 0:
		s.log.Info("etcd watch of the leases is back; the table catches up from where it stopped",
			zap.String("prefix", s.prefix), zap.Duration("down_for", ended.Round(time.Millisecond)), zap.Int("leases", s.t.Len()))
	}
}

func (s *syncer) apply(ev *clientv3.Event) {
	key := string(ev.Kv.Key)
	var l Lease
	ok := false
	if ev.Type == mvccpb.PUT {
		l, ok = s.parse(ev.Kv)
	} else {
		delete(s.warned, key)
	}
	var changes []Change
	s.t.mu.Lock()
	if ok {
		changes, _ = s.t.put(l)
	} else {
		// Deleted, or no longer believable: forget what the key said.
		changes = s.t.remove(key)
	}
	// Any event can reject a lease, not only the one it is about: a delete
	// that admits an older lease can push out a newer one it conflicts with.
	rejected := s.t.rejectedLeases()
	s.t.mu.Unlock()
	s.warnRejected(rejected)
	s.t.notify(changes)
}

// parse turns a key-value into a lease, warning once per key and revision
// about a bad one.
func (s *syncer) parse(kv *mvccpb.KeyValue) (Lease, bool) {
	key := string(kv.Key)
	l, err := s.parseKV(kv)
	if err != nil {
		if s.warned[key] != kv.ModRevision {
			s.warned[key] = kv.ModRevision
			s.t.stats.invalid.Add(1)
			s.log.Warn("skipping invalid lease", zap.String("key", key), zap.Int64("mod_revision", kv.ModRevision), zap.Error(err))
		}
		return Lease{}, false
	}
	return l, true
}

func (s *syncer) parseKV(kv *mvccpb.KeyValue) (Lease, error) {
	subnetKey, ok := strings.CutPrefix(string(kv.Key), s.prefix)
	if !ok || strings.Contains(subnetKey, "/") {
		return Lease{}, fmt.Errorf("not a lease key under %s", s.prefix)
	}
	l, err := ParseLease(subnetKey, kv.Value)
	if err != nil {
		return Lease{}, err
	}
	if err := s.t.check(l); err != nil {
		return Lease{}, err
	}
	l = s.t.trim(l)
	l.Key, l.CreateRevision, l.ModRevision, l.EtcdLease = string(kv.Key), kv.CreateRevision, kv.ModRevision, kv.Lease
	return l, nil
}

// warnRejected warns about each rejected lease once per key and revision.
func (s *syncer) warnRejected(rejected []rejectedLease) {
	for _, r := range rejected {
		if s.warned[r.lease.Key] == r.lease.ModRevision {
			continue
		}
		s.warned[r.lease.Key] = r.lease.ModRevision
		s.t.stats.conflicts.Add(1)
		s.log.Warn("lease conflicts with another; not installing it until the conflict is gone",
			zap.String("key", r.lease.Key), zap.Int64("mod_revision", r.lease.ModRevision), zap.Error(r.reason))
	}
}

// connected reports whether the client's connection to etcd is up. A client
// without a gRPC connection of its own (one made around another's watcher)
// cannot tell, and counts as connected.
func connected(c *clientv3.Client) bool {
	conn := c.ActiveConnection()
	return conn == nil || conn.GetState() == connectivity.Ready
}

// backoff is a capped exponential backoff with jitter.
type backoff struct {
	min, max, cur time.Duration
}

func newBackoff(min, max time.Duration) *backoff { return &backoff{min: min, max: max, cur: min} }

func (b *backoff) peek() time.Duration { return b.cur }
func (b *backoff) reset()              { b.cur = b.min }

// next returns the current backoff (±20%) and doubles it.
func (b *backoff) next() time.Duration {
	d := b.cur + time.Duration(float64(b.cur)*0.4*(rand.Float64()-0.5))
	b.cur = min(2*b.cur, b.max)
	return d
}

// wait sleeps for the next backoff. It returns false if ctx ended first.
func (b *backoff) wait(ctx context.Context) bool {
	timer := time.NewTimer(b.next())
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
		return true
	}
}
