package store

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// DefaultLeaseTTL is how long a subnet lease lives without renewal, as in
// flannel.
const DefaultLeaseTTL = 24 * time.Hour

// DefaultRenewMargin is how long before expiry the lease is renewed, as
// flannel's --subnet-lease-renew-margin default.
const DefaultRenewMargin = time.Hour

// Claim is what this host publishes about itself.
type Claim struct {
	PublicIP netip.Addr
	VtepMAC  MAC
	// Previous is a subnet this host held before (flannel reads it from the
	// subnet file). It is taken again if it is free.
	Previous netip.Prefix
	// TTL of the etcd lease the subnet key is bound to.
	TTL time.Duration
}

// ErrNoFreeSubnet is returned when every subnet of the network is leased.
var ErrNoFreeSubnet = errors.New("no free subnet")

// ErrSubnetTaken says this host's subnet is held by another writer: its
// key names another host, or another lease overlaps it.
var ErrSubnetTaken = errors.New("subnet taken by another host")

// OwnLease is this host's lease on its subnet: a key under
// <prefix>/subnets/ bound to an etcd lease that is renewed well before it
// expires.
type OwnLease struct {
	c       *clientv3.Client
	prefix  string
	cfg     Config
	claim   Claim
	log     *zap.Logger
	recheck chan struct{}
	// pageSize is how many keys a page of the lease list holds (tests
	// make it small).
	pageSize int64

	mu      sync.Mutex
	lease   Lease
	expires time.Time
	// conflict, when not nil, is why the subnet is not this host's in etcd
	// now (ErrSubnetTaken), since conflictSince.
	conflict      error
	conflictSince time.Time

	outages      atomic.Uint64 // episodes of failed renewals
	outageMillis atomic.Uint64 // their total length
	conflicts    atomic.Uint64 // episodes of conflict
}

// AcquireLease takes a subnet for this host. A lease that already carries
// claim.PublicIP is reused (a restart keeps its subnet, and its etcd lease if
// still alive); otherwise claim.Previous is taken if free, otherwise a random
// free subnet. Every write is a transaction that fails if someone else wrote
// first, so concurrent agents never share a subnet.
func AcquireLease(ctx context.Context, c *clientv3.Client, prefix string, cfg Config, claim Claim, log *zap.Logger) (*OwnLease, error) {
	if claim.TTL <= 0 {
		claim.TTL = DefaultLeaseTTL
	}
	o := &OwnLease{c: c, prefix: prefix, cfg: cfg, claim: claim, log: log, recheck: make(chan struct{}, 1), pageSize: listPageSize}
	if err := o.acquire(ctx); err != nil {
		return nil, err
	}
	return o, nil
}

// Lease returns the current lease.
func (o *OwnLease) Lease() Lease {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.lease
}

// Expires returns when the lease expires unless renewed.
func (o *OwnLease) Expires() time.Time {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.expires
}

// Conflict returns why this host's subnet is not its own in etcd now (its
// key rewritten by another writer, or another lease over it), and since
// when; nil while the lease is held.
func (o *OwnLease) Conflict() (error, time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.conflict, o.conflictSince
}

// OwnLeaseStats counts the own lease's troubles.
type OwnLeaseStats struct {
	// Outages counts episodes of renewals failing (etcd unreachable), and
	// OutageTime their total length.
	Outages    uint64
	OutageTime time.Duration
	// Conflicts counts episodes of the subnet held by another writer.
	Conflicts uint64
}

// Stats returns the counts.
func (o *OwnLease) Stats() OwnLeaseStats {
	return OwnLeaseStats{Outages: o.outages.Load(), OutageTime: time.Duration(o.outageMillis.Load()) * time.Millisecond,
		Conflicts: o.conflicts.Load()}
}

// Recheck asks Hold to verify the lease in etcd now, e.g. because the
// table saw its key change. It never blocks.
func (o *OwnLease) Recheck() {
	select {
	case o.recheck <- struct{}{}:
	default:
	}
}

func (o *OwnLease) set(l Lease, ttl time.Duration) {
	o.mu.Lock()
	o.lease, o.expires = l, time.Now().Add(ttl)
	o.mu.Unlock()
}

// Hold renews the lease margin before it expires, until ctx is done, and
// returns ctx.Err(). When the key has vanished (deleted by an operator, or
// expired during a long etcd outage) the same subnet is taken again if it
// is free.
//
// When another writer holds the subnet (the key rewritten with another
// host's public IP, or another lease over the subnet), Hold does not give
// up, nor overwrite it, nor move to another subnet: it logs the conflict
// with both values, Conflict reports it (readiness says so), and it takes
// the subnet back as soon as the key is free again or says this host's
// own attributes. The data path is not Hold's: it goes on answering from
// the table meanwhile. Stopping while in conflict revokes this host's etcd
// lease, which no longer holds its key.
//
// Failed renewals are logged once when they start and once when they end,
// with how long they lasted.
func (o *OwnLease) Hold(ctx context.Context, margin time.Duration) error {
	margin = min(margin, o.claim.TTL/2)
	bo := newBackoff(time.Second, time.Minute)
	var failingSince time.Time
	for {
		wait := time.Until(o.Expires().Add(-margin))
		switch conflict, _ := o.Conflict(); {
		case conflict != nil:
			// The table watches the key and rechecks at once when it
			// changes: a slow poll is enough.
			wait = bo.next()
		case !failingSince.IsZero():
			// Back off, but never so far that the lease expires between two
			// attempts: retry at least four times in what is left of it.
			wait = min(bo.next(), max(time.Until(o.Expires())/4, 200*time.Millisecond))
		}
		// A recheck cuts any wait short, the backoff after a failure too:
		// when etcd comes back and the table shows our key gone, the subnet
		// is taken again at once, not after the backoff.
		timer := time.NewTimer(max(wait, 0))
		select {
		case <-ctx.Done():
			timer.Stop()
			o.release()
			return ctx.Err()
		case <-timer.C:
		case <-o.recheck:
			timer.Stop()
		}
		// A member cut off from the rest of the cluster has no leader: a
		// linearizable read or a lease call it takes waits out etcd's
		// request timeout (5 s and two election timeouts) before failing,
		// and a renewal of a few such calls outlives a short lease. With
		// WithRequireLeader it fails at once, and etcd's client retries a
		// read on another member at once; a failed call is retried by
		// the loop above.
		rctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), 15*time.Second)
		err := o.renew(rctx)
		cancel()
		if ctx.Err() != nil {
			o.release()
			return ctx.Err()
		}
		switch {
		case errors.Is(err, ErrSubnetTaken):
			o.setConflict(err)
			failingSince = o.renewalsWork(failingSince) // etcd answered
		case err != nil:
			if failingSince.IsZero() {
				failingSince = time.Now()
				o.outages.Add(1)
				o.log.Warn("renewing own lease failed; retrying until it works (the overlay goes on meanwhile)", zap.Error(err),
					zap.Time("expires", o.Expires()), zap.Duration("backoff", bo.peek()))
			} else {
				o.log.Debug("renewing own lease failed again", zap.Error(err), zap.Duration("backoff", bo.peek()))
			}
		default:
			o.setConflict(nil)
			failingSince = o.renewalsWork(failingSince)
			bo.reset()
		}
	}
}

// renewalsWork ends an episode of failed renewals, if one began at since,
// and says so with how long it lasted. It returns the zero time.
func (o *OwnLease) renewalsWork(since time.Time) time.Time {
	if !since.IsZero() {
		d := time.Since(since)
		o.outageMillis.Add(uint64(d.Milliseconds()))
		o.log.Info("renewing own lease works again", zap.Duration("failed_for", d.Round(time.Millisecond)), zap.Time("expires", o.Expires()))
	}
	return time.Time{}
}

// setConflict records whether the subnet is held by another writer, and
// logs when that starts and ends.
func (o *OwnLease) setConflict(err error) {
	o.mu.Lock()
	was, since := o.conflict, o.conflictSince
	o.conflict = err
	if err != nil && was == nil {
		o.conflictSince = time.Now()
	}
	l := o.lease
	o.mu.Unlock()
	switch {
	case err != nil && was == nil:
		o.conflicts.Add(1)
		o.log.Error("own subnet is held by another writer in etcd; not ready, still answering from the lease table, and taking it back once it is free or ours again",
			zap.String("key", l.Key), zap.Stringer("ours", l), zap.Error(err))
	case err == nil && was != nil:
		o.log.Info("own subnet is ours again in etcd", zap.String("key", l.Key), zap.Stringer("lease", l),
			zap.Duration("conflict_lasted", time.Since(since).Round(time.Millisecond)))
	}
}

// release revokes this host's etcd lease when its key is not this host's
// any more: the lease holds nothing of ours, and left alone it would live
// out its TTL. It never revokes a lease another writer's key is bound to.
func (o *OwnLease) release() {
	conflict, _ := o.Conflict()
	l := o.Lease()
	if conflict == nil || l.EtcdLease == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	resp, err := o.c.Get(ctx, l.Key)
	if err != nil || len(resp.Kvs) == 1 && resp.Kvs[0].Lease == l.EtcdLease {
		return
	}
	if _, err := o.c.Revoke(ctx, clientv3.LeaseID(l.EtcdLease)); err == nil {
		o.log.Info("revoked own etcd lease: the key is another writer's", zap.String("key", l.Key), zap.Int64("etcd_lease", l.EtcdLease))
	}
}

// renew refreshes the etcd lease, re-creating the key if it is gone.
func (o *OwnLease) renew(ctx context.Context) error {
	l := o.Lease()
	resp, err := o.c.Get(ctx, l.Key)
	if err != nil {
		return fmt.Errorf("store: read own lease %s: %w", l.Key, err)
	}
	if len(resp.Kvs) == 1 {
		kv := resp.Kvs[0]
		cur, err := ParseLease(SubnetKey(l.Subnet), kv.Value)
		if err == nil && cur.PublicIP != o.claim.PublicIP {
			return fmt.Errorf("store: %s now says %s (%s), written at revision %d: %w", l.Key, cur, kv.Value, kv.ModRevision, ErrSubnetTaken)
		}
		if err == nil && cur.VtepMAC == o.claim.VtepMAC && cur.VNI == o.cfg.Backend.VNI && kv.Lease != 0 {
			ka, err := o.c.KeepAliveOnce(ctx, clientv3.LeaseID(kv.Lease))
			if err == nil {
				l.EtcdLease, l.ModRevision = kv.Lease, kv.ModRevision
				o.set(l, time.Duration(ka.TTL)*time.Second)
				o.log.Debug("own lease renewed", zap.String("key", l.Key), zap.Int64("ttl_seconds", ka.TTL))
				return nil
			}
			if !errors.Is(err, rpctypes.ErrLeaseNotFound) {
				return fmt.Errorf("store: renew own lease %s: %w", l.Key, err)
			}
			// The etcd lease expired between the read and the keepalive;
			// the key goes with it. Take the subnet again.
		}
		o.log.Warn("own lease changed in etcd; publishing ours again", zap.String("key", l.Key), zap.ByteString("value", kv.Value))
	} else {
		o.log.Warn("own lease vanished from etcd (deleted, or expired during an outage); taking the subnet again", zap.String("key", l.Key))
	}
	// Re-acquire exactly this subnet: another one would change every
	// address on this host.
	o.claim.Previous = l.Subnet
	err = o.acquire(ctx)
	if errors.Is(err, errPreviousTaken) {
		return fmt.Errorf("store: own subnet %s: overlapped by another lease: %w", l.Subnet, ErrSubnetTaken)
	}
	return err
}

// errPreviousTaken tells renew that the previous subnet went to another host.
var errPreviousTaken = errors.New("previous subnet taken")

// acquire runs the compare-and-create loop.
func (o *OwnLease) acquire(ctx context.Context) error {
	prefix := SubnetsPrefix(o.prefix)
	renewing := o.Lease().Key != ""
	var granted clientv3.LeaseID // granted but not yet bound to a key
	defer func() {
		if granted != 0 {
			// Best effort: an unused lease expires on its own anyway.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			o.c.Revoke(rctx, granted)
			cancel()
		}
	}()
	grant := func() (clientv3.LeaseID, error) {
		if granted != 0 {
			return granted, nil
		}
		g, err := o.c.Grant(ctx, int64(o.claim.TTL/time.Second))
		if err != nil {
			return 0, fmt.Errorf("store: grant etcd lease: %w", err)
		}
		granted = g.ID
		return granted, nil
	}

	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		taken := newTakenSet(o.cfg.SubnetLen)
		var mine *Lease
		_, err := rangePages(ctx, o.c, prefix, o.pageSize, func(kv *mvccpb.KeyValue, _ int64) {
			sk := string(kv.Key[len(prefix):])
			p, err := ParseSubnetKey(sk)
			if err != nil {
				return // not a subnet: occupies nothing
			}
			l, perr := ParseLease(sk, kv.Value)
			var ours bool
			if renewing {
				// Our own key, unless it now names another host; a value
				// nobody can read is overwritten.
				ours = p == o.claim.Previous && (perr != nil || l.PublicIP == o.claim.PublicIP)
			} else {
				ours = perr == nil && l.PublicIP == o.claim.PublicIP && o.compatible(p)
			}
			if !ours {
				taken.add(p)
				return
			}
			if perr != nil {
				l = Lease{Subnet: p, PublicIP: o.claim.PublicIP}
			}
			l.Key, l.CreateRevision, l.ModRevision, l.EtcdLease = string(kv.Key), kv.CreateRevision, kv.ModRevision, kv.Lease
			mine = &l
		})
		if err != nil {
			return fmt.Errorf("store: list leases: %w", err)
		}

		var won bool
		var l Lease
		if mine != nil {
			l, won, err = o.takeOver(ctx, *mine, grant)
		} else {
			var subnet netip.Prefix
			if p := o.claim.Previous; p.IsValid() && o.compatible(p) && !taken.overlaps(p) {
				subnet = p
			} else if renewing {
				return errPreviousTaken
			} else if subnet, err = o.pickFree(taken); err != nil {
				return err
			}
			l, won, err = o.create(ctx, subnet, grant)
		}
		if err != nil {
			return err
		}
		if won {
			if l.EtcdLease == int64(granted) {
				granted = 0 // bound to our key now: keep it
			}
			o.set(l, o.ttlOf(ctx, l))
			o.log.Info("own lease acquired", zap.String("key", l.Key), zap.Stringer("subnet", l.Subnet),
				zap.Stringer("public_ip", l.PublicIP), zap.Stringer("vtep_mac", l.VtepMAC), zap.Int("attempt", attempt))
			return nil
		}
		// Someone wrote first. Re-list and try again; the random pick
		// makes a second collision unlikely.
		o.log.Debug("lost a race for a subnet; retrying", zap.Int("attempt", attempt))
	}
}

// takeOver makes an existing lease with our public IP ours: no write at all
// if it already says what we would write and its etcd lease is alive, so a
// restart is invisible to peers.
func (o *OwnLease) takeOver(ctx context.Context, mine Lease, grant func() (clientv3.LeaseID, error)) (Lease, bool, error) {
	want := mine
	want.VtepMAC, want.VNI = o.claim.VtepMAC, o.cfg.Backend.VNI
	id := clientv3.LeaseID(mine.EtcdLease)
	if id != 0 {
		ttl, err := o.c.TimeToLive(ctx, id)
		if err != nil {
			return Lease{}, false, fmt.Errorf("store: read etcd lease of %s: %w", mine.Key, err)
		}
		if ttl.TTL <= 0 || ttl.GrantedTTL != int64(o.claim.TTL/time.Second) {
			id = 0
		}
	}
	if id != 0 && mine.SameTarget(want) && mine.VNI == want.VNI {
		if _, err := o.c.KeepAliveOnce(ctx, id); err == nil {
			return mine, true, nil
		}
		id = 0
	}
	if id == 0 {
		var err error
		if id, err = grant(); err != nil {
			return Lease{}, false, err
		}
	}
	txn, err := o.c.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(mine.Key), "=", mine.ModRevision)).
		Then(clientv3.OpPut(mine.Key, string(want.Value()), clientv3.WithLease(id))).
		Commit()
	if err != nil {
		return Lease{}, false, fmt.Errorf("store: update %s: %w", mine.Key, err)
	}
	want.EtcdLease, want.ModRevision = int64(id), txn.Header.Revision
	if txn.Succeeded && mine.EtcdLease != 0 && mine.EtcdLease != int64(id) {
		// The key has moved to the new etcd lease; the old one holds nothing
		// of ours now. Revoking it is tidiness, not correctness: best effort.
		o.c.Revoke(ctx, clientv3.LeaseID(mine.EtcdLease))
	}
	return want, txn.Succeeded, nil
}

// create claims a free subnet with a compare-and-create transaction.
func (o *OwnLease) create(ctx context.Context, subnet netip.Prefix, grant func() (clientv3.LeaseID, error)) (Lease, bool, error) {
	id, err := grant()
	if err != nil {
		return Lease{}, false, err
	}
	l := Lease{
		Key:       SubnetsPrefix(o.prefix) + SubnetKey(subnet),
		Subnet:    subnet,
		PublicIP:  o.claim.PublicIP,
		VtepMAC:   o.claim.VtepMAC,
		VNI:       o.cfg.Backend.VNI,
		EtcdLease: int64(id),
	}
	txn, err := o.c.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(l.Key), "=", 0)).
		Then(clientv3.OpPut(l.Key, string(l.Value()), clientv3.WithLease(id))).
		Commit()
	if err != nil {
		return Lease{}, false, fmt.Errorf("store: create %s: %w", l.Key, err)
	}
	l.CreateRevision, l.ModRevision = txn.Header.Revision, txn.Header.Revision
	return l, txn.Succeeded, nil
}

func (o *OwnLease) ttlOf(ctx context.Context, l Lease) time.Duration {
	if ttl, err := o.c.TimeToLive(ctx, clientv3.LeaseID(l.EtcdLease)); err == nil && ttl.TTL > 0 {
		return time.Duration(ttl.TTL) * time.Second
	}
	return o.claim.TTL
}

// compatible reports whether p is a subnet this host may hold under the
// current configuration.
func (o *OwnLease) compatible(p netip.Prefix) bool {
	return p.Bits() == o.cfg.SubnetLen && !p.Addr().Less(o.cfg.SubnetMin) && !o.cfg.SubnetMax.Less(p.Addr())
}

// pickFree returns a random free subnet between SubnetMin and SubnetMax.
func (o *OwnLease) pickFree(taken *takenSet) (netip.Prefix, error) {
	n := o.cfg.SubnetCount()
	at := func(i int) netip.Prefix {
		return netip.PrefixFrom(addrFrom(u32(o.cfg.SubnetMin)+uint32(i)<<(32-o.cfg.SubnetLen)), o.cfg.SubnetLen)
	}
	// Random probes first: cheap while the network has room, and they
	// spread agents that start together over different subnets.
	for range 64 {
		if p := at(rand.IntN(n)); !taken.overlaps(p) {
			return p, nil
		}
	}
	var free []netip.Prefix
	for i := range n {
		if p := at(i); !taken.overlaps(p) {
			free = append(free, p)
		}
	}
	if len(free) == 0 {
		return netip.Prefix{}, fmt.Errorf("store: network %s has no free /%d subnet: all %d between %s and %s are leased: %w",
			o.cfg.Network, o.cfg.SubnetLen, n, o.cfg.SubnetMin, o.cfg.SubnetMax, ErrNoFreeSubnet)
	}
	return free[rand.IntN(len(free))], nil
}

// takenSet answers "does any lease overlap this subnet" in O(1) for leases
// of the configured length, which is nearly all of them.
type takenSet struct {
	bits   int
	starts map[uint32]bool
	other  []netip.Prefix
}

func newTakenSet(bits int) *takenSet { return &takenSet{bits: bits, starts: make(map[uint32]bool)} }

func (s *takenSet) add(p netip.Prefix) {
	if p.Bits() == s.bits {
		s.starts[u32(p.Addr())] = true
		return
	}
	s.other = append(s.other, p)
}

func (s *takenSet) overlaps(p netip.Prefix) bool {
	if p.Bits() == s.bits && s.starts[u32(p.Addr())] {
		return true
	}
	for _, o := range s.other {
		if o.Overlaps(p) {
			return true
		}
	}
	return false
}
