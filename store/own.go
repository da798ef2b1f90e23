package store

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"
	"net/netip"
	"strings"
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

// Claim is what this host publishes about itself. The parts of a family
// the overlay does not have are not published.
type Claim struct {
	// PublicIP is the IPv4 underlay address (required with IPv4). In an
	// IPv6-only overlay it may be set: the IPv6 device then rides IPv4,
	// unless PublicIPv6 is set too.
	PublicIP netip.Addr
	// VtepMAC is the IPv4 VXLAN device's MAC.
	VtepMAC MAC
	// Previous is a subnet this host held before (flannel reads it from the
	// subnet file). It is taken again if it is free.
	Previous netip.Prefix
	// PublicIPv6 is the IPv6 underlay address, published as the lease's
	// PublicIPv6 when the overlay has IPv6; without it the IPv6 part's
	// VTEP address is PublicIP.
	PublicIPv6 netip.Addr
	// VtepMACv6 is the IPv6 VXLAN device's MAC (required with IPv6).
	VtepMACv6 MAC
	// PreviousIPv6 is Previous for the IPv6 family.
	PreviousIPv6 netip.Prefix
	// TTL of the etcd lease the subnet key is bound to.
	TTL time.Duration
}

// check says what the claim lacks for the overlay of cfg.
func (c Claim) check(cfg Config) error {
	_, v4 := cfg.IPv4()
	_, v6 := cfg.IPv6()
	switch {
	case c.PublicIP.IsValid() && !c.PublicIP.Is4():
		return fmt.Errorf("store: claim: PublicIP %s is not an IPv4 address", c.PublicIP)
	case c.PublicIPv6.IsValid() && (!c.PublicIPv6.Is6() || c.PublicIPv6.Is4In6()):
		return fmt.Errorf("store: claim: PublicIPv6 %s is not an IPv6 address", c.PublicIPv6)
	case v4 && !c.PublicIP.IsValid():
		return errors.New("store: claim: the overlay has IPv4, and PublicIP is not set")
	case v4 && !c.VtepMAC.IsUnicast():
		return fmt.Errorf("store: claim: VtepMAC %s is not a unicast MAC", c.VtepMAC)
	case v6 && !c.PublicIP.IsValid() && !c.PublicIPv6.IsValid():
		return errors.New("store: claim: the overlay has IPv6, and neither PublicIPv6 nor PublicIP is set")
	case v6 && !c.VtepMACv6.IsUnicast():
		return fmt.Errorf("store: claim: VtepMACv6 %s is not a unicast MAC", c.VtepMACv6)
	}
	return nil
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

// AcquireLease takes a subnet of every family of the overlay for this host,
// published under one key, LeaseKey(v4, v6). A lease that already carries
// this host's public IP (claim.PublicIP, or for an IPv6-only host without
// one claim.PublicIPv6) is reused: a restart keeps its subnets, and its
// etcd lease if still alive. When the config asks for a family that lease
// lacks (a host going dual-stack), or has one it no longer has, the key
// changes: the old key is deleted and the new one put in one transaction
// that fails if either changed. Otherwise claim.Previous and
// claim.PreviousIPv6 are taken if free, else random free subnets.
//
// Every write is a transaction that fails if someone else wrote first, and a
// key with an IPv6 part, which another key may share without sharing its
// name, is checked once written: of two overlapping keys, the younger gives
// way. So concurrent agents never share a subnet of either family. A key
// with an IPv6 part is never written unless the config has IPv6: a flanneld
// with IPv6 off may crash on one.
func AcquireLease(ctx context.Context, c *clientv3.Client, prefix string, cfg Config, claim Claim, log *zap.Logger) (*OwnLease, error) {
	if claim.TTL <= 0 {
		claim.TTL = DefaultLeaseTTL
	}
	if err := claim.check(cfg); err != nil {
		return nil, err
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
		// the loop above. One attempt may take at most half of what is left
		// of the lease (15 s at most, 1 s at least), so that a member that
		// silently stopped answering costs one attempt, not the lease.
		rctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), attemptTimeout(time.Until(o.Expires())))
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

// attemptTimeout bounds one renewal attempt by what is left of the lease.
func attemptTimeout(left time.Duration) time.Duration {
	return min(max(left/2, time.Second), 15*time.Second)
}

// renewalsWork ends an episode of failed renewals, if one began at since,
// and says so with how long it lasted. It returns the zero time.
func (o *OwnLease) renewalsWork(since time.Time) time.Time {
	if !since.IsZero() {
		d := time.Since(since)
		o.outages.Add(1) // counted once over, as the watch's outages are
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
		cur, err := ParseLease(strings.TrimPrefix(l.Key, SubnetsPrefix(o.prefix)), kv.Value)
		if err == nil && !o.isOurs(cur) {
			return fmt.Errorf("store: %s now says %s (%s), written at revision %d: %w", l.Key, cur, kv.Value, kv.ModRevision, ErrSubnetTaken)
		}
		if err == nil && cur.SameTarget(l) && cur.VNI == o.cfg.Backend.VNI && kv.Lease != 0 {
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
	// Re-acquire exactly these subnets: others would change every address
	// on this host.
	o.claim.Previous, o.claim.PreviousIPv6 = l.Subnet, l.IPv6Subnet
	err = o.acquire(ctx)
	if errors.Is(err, errPreviousTaken) {
		return fmt.Errorf("store: own subnet %s: overlapped by another lease: %w", subnetsOf(l), ErrSubnetTaken)
	}
	return err
}

// subnetsOf names a lease's subnets, for messages.
func subnetsOf(l Lease) string {
	switch {
	case l.Subnet.IsValid() && l.IPv6Subnet.IsValid():
		return l.Subnet.String() + " and " + l.IPv6Subnet.String()
	case l.IPv6Subnet.IsValid():
		return l.IPv6Subnet.String()
	default:
		return l.Subnet.String()
	}
}

// isOurs reports whether l names this host: by its IPv4 underlay address,
// or, for a host with none (IPv6-only over IPv6), its IPv6 one.
func (o *OwnLease) isOurs(l Lease) bool {
	if o.claim.PublicIP.IsValid() {
		return l.PublicIP == o.claim.PublicIP
	}
	return l.PublicIPv6 == o.claim.PublicIPv6
}

// want is the lease this host publishes for the subnets v4 and v6 (either
// invalid for a family the overlay does not have).
func (o *OwnLease) want(v4, v6 netip.Prefix) Lease {
	l := Lease{Key: SubnetsPrefix(o.prefix) + LeaseKey(v4, v6), Subnet: v4, PublicIP: o.claim.PublicIP, VNI: o.cfg.Backend.VNI}
	if v4.IsValid() {
		l.VtepMAC = o.claim.VtepMAC
	}
	if v6.IsValid() {
		l.IPv6Subnet, l.PublicIPv6, l.VtepMACv6 = v6, o.claim.PublicIPv6, o.claim.VtepMACv6
	}
	return l
}

// errPreviousTaken tells renew that the previous subnet went to another host.
var errPreviousTaken = errors.New("previous subnet taken")

// acquire runs the compare-and-create loop.
func (o *OwnLease) acquire(ctx context.Context) error {
	prefix := SubnetsPrefix(o.prefix)
	own := o.Lease()
	renewing := own.Key != ""
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
	_, v4on := o.cfg.IPv4()
	_, v6on := o.cfg.IPv6()

	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		taken4, taken6 := newTakenSet(o.cfg.SubnetLen), newTakenSet(o.cfg.IPv6SubnetLen)
		var candidates []Lease
		_, err := rangePages(ctx, o.c, prefix, o.pageSize, func(kv *mvccpb.KeyValue, _ int64) {
			sk := string(kv.Key[len(prefix):])
			p4, p6, err := ParseLeaseKey(sk)
			if err != nil {
				// Not a subnet: occupies nothing, but for the IPv4 part of a
				// key with a bad IPv6 part, which a new key's transaction
				// counts as taken (see freeKey).
				if v4s, _, dual := strings.Cut(sk, "&"); dual {
					if p, _, err := ParseLeaseKey(v4s); err == nil {
						taken4.add(p, kv.CreateRevision)
					}
				}
				return
			}
			l, perr := ParseLease(sk, kv.Value)
			var ours bool
			if renewing {
				// Our own key, unless it now names another host; a value
				// nobody can read is overwritten.
				ours = string(kv.Key) == own.Key && (perr != nil || o.isOurs(l))
			} else {
				ours = perr == nil && o.isOurs(l) && o.fits(p4, p6)
			}
			if !ours {
				taken4.add(p4, kv.CreateRevision)
				taken6.add(p6, kv.CreateRevision)
				return
			}
			if perr != nil {
				l = o.want(p4, p6)
			}
			l.Key, l.CreateRevision, l.ModRevision, l.EtcdLease = string(kv.Key), kv.CreateRevision, kv.ModRevision, kv.Lease
			candidates = append(candidates, l)
		})
		if err != nil {
			return fmt.Errorf("store: list leases: %w", err)
		}
		// Of several leases of ours, one with the config's families (no new
		// key); the others occupy their subnets as anyone's do.
		var mine *Lease
		sameFamilies := func(l *Lease) bool { return l.Subnet.IsValid() == v4on && l.IPv6Subnet.IsValid() == v6on }
		for i := range candidates {
			if c := &candidates[i]; mine == nil || sameFamilies(c) && !sameFamilies(mine) {
				mine = c
			}
		}
		for _, c := range candidates {
			if mine != nil && c.Key != mine.Key {
				taken4.add(c.Subnet, c.CreateRevision)
				taken6.add(c.IPv6Subnet, c.CreateRevision)
			}
		}

		// The subnets to hold: mine's of each family the overlay has, unless
		// an older lease (the one every table believes) overlaps it; else
		// the previous ones, or free ones.
		var keep4, keep6 netip.Prefix
		if mine != nil {
			if !taken4.overlapsOlder(mine.Subnet, mine.CreateRevision) {
				keep4 = mine.Subnet
			}
			if !taken6.overlapsOlder(mine.IPv6Subnet, mine.CreateRevision) {
				keep6 = mine.IPv6Subnet
			}
		}
		var v4, v6 netip.Prefix
		if v4on {
			if v4, err = o.choose(keep4, o.claim.Previous, taken4, renewing, o.compatible4, o.pickFree4); err != nil {
				return err
			}
		}
		if v6on {
			if v6, err = o.choose(keep6, o.claim.PreviousIPv6, taken6, renewing, o.compatible6, o.pickFree6); err != nil {
				return err
			}
		}
		want := o.want(v4, v6)

		var won bool
		var l Lease
		switch {
		case mine != nil && mine.Key == want.Key:
			l, won, err = o.takeOver(ctx, *mine, grant)
		case mine != nil:
			l, won, err = o.moveKey(ctx, *mine, want, grant)
		default:
			l, won, err = o.create(ctx, want, grant)
		}
		if err != nil {
			return err
		}
		if won && l.EtcdLease == int64(granted) {
			granted = 0 // bound to our key now: keep it
		}
		if won && l.IPv6Subnet.IsValid() && (mine == nil || mine.Key != l.Key) {
			// A new key's IPv6 part: no transaction could see a key with
			// another IPv4 part and the same IPv6 one. Look now; if an older
			// one has it, the next round moves our key off it (keeping its
			// IPv4 part), as the older one's writer keeps it.
			elder, err := o.elder6(ctx, l)
			if err != nil {
				return err
			}
			if elder != "" {
				o.log.Debug("lost a race for an IPv6 subnet; moving off it", zap.String("key", l.Key), zap.String("elder", elder))
				continue
			}
		}
		if won {
			o.set(l, o.ttlOf(ctx, l))
			fields := []zap.Field{zap.String("key", l.Key), zap.Int("attempt", attempt)}
			if p, ok := l.IPv4(); ok {
				fields = append(fields, zap.Stringer("subnet", p.Subnet), zap.Stringer("public_ip", p.PublicIP), zap.Stringer("vtep_mac", p.VtepMAC))
			}
			if p, ok := l.IPv6(); ok {
				fields = append(fields, zap.Stringer("ipv6_subnet", p.Subnet), zap.Stringer("public_ipv6", p.PublicIP), zap.Stringer("vtep_mac_v6", p.VtepMAC))
			}
			if mine != nil && mine.Key != l.Key {
				fields = append(fields, zap.String("old_key", mine.Key))
			}
			o.log.Info("own lease acquired", fields...)
			return nil
		}
		// Someone wrote first. Re-list and try again; the random pick
		// makes a second collision unlikely.
		o.log.Debug("lost a race for a subnet; retrying", zap.Int("attempt", attempt))
	}
}

// choose returns the subnet of one family to hold: keep (what our lease
// has) if valid, else previous if it may be held and is free, else (not
// when renewing, which wants exactly the previous one) a free one.
func (o *OwnLease) choose(keep, previous netip.Prefix, taken *takenSet, renewing bool,
	compatible func(netip.Prefix) bool, pickFree func(*takenSet) (netip.Prefix, error)) (netip.Prefix, error) {
	switch {
	case keep.IsValid():
		return keep, nil
	case previous.IsValid() && compatible(previous) && !taken.overlaps(previous):
		return previous, nil
	case renewing:
		return netip.Prefix{}, errPreviousTaken
	default:
		return pickFree(taken)
	}
}

// fits reports whether a lease of ours with the key's subnets v4 and v6 may
// be kept: each family the overlay has and the key has is a subnet this
// host may hold. A family the key lacks is added, one the overlay lacks
// dropped, both by a new key.
func (o *OwnLease) fits(v4, v6 netip.Prefix) bool {
	_, v4on := o.cfg.IPv4()
	_, v6on := o.cfg.IPv6()
	return (!v4on || !v4.IsValid() || o.compatible4(v4)) && (!v6on || !v6.IsValid() || o.compatible6(v6))
}

// takeOver makes an existing lease with our public IP ours: no write at all
// if it already says what we would write and its etcd lease is alive, so a
// restart is invisible to peers.
func (o *OwnLease) takeOver(ctx context.Context, mine Lease, grant func() (clientv3.LeaseID, error)) (Lease, bool, error) {
	want := o.want(mine.Subnet, mine.IPv6Subnet)
	want.Key, want.CreateRevision = mine.Key, mine.CreateRevision
	id, err := o.reusable(ctx, mine, grant)
	if err != nil {
		return Lease{}, false, err
	}
	if id == clientv3.LeaseID(mine.EtcdLease) && mine.SameTarget(want) && mine.VNI == want.VNI {
		if _, err := o.c.KeepAliveOnce(ctx, id); err == nil {
			return mine, true, nil
		}
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

// reusable returns mine's etcd lease if it is alive with our TTL, else a
// granted one.
func (o *OwnLease) reusable(ctx context.Context, mine Lease, grant func() (clientv3.LeaseID, error)) (clientv3.LeaseID, error) {
	if id := clientv3.LeaseID(mine.EtcdLease); id != 0 {
		ttl, err := o.c.TimeToLive(ctx, id)
		if err != nil {
			return 0, fmt.Errorf("store: read etcd lease of %s: %w", mine.Key, err)
		}
		if ttl.TTL > 0 && ttl.GrantedTTL == int64(o.claim.TTL/time.Second) {
			return id, nil
		}
	}
	return grant()
}

// moveKey replaces our lease mine by want under another key (the families
// changed), in one transaction that fails if mine changed or want's key
// exists. mine's subnets are kept where want has their family.
func (o *OwnLease) moveKey(ctx context.Context, mine, want Lease, grant func() (clientv3.LeaseID, error)) (Lease, bool, error) {
	id, err := o.reusable(ctx, mine, grant)
	if err != nil {
		return Lease{}, false, err
	}
	conds := append(o.freeKey(want, mine.Key), clientv3.Compare(clientv3.ModRevision(mine.Key), "=", mine.ModRevision))
	txn, err := o.c.Txn(ctx).
		If(conds...).
		Then(clientv3.OpDelete(mine.Key), clientv3.OpPut(want.Key, string(want.Value()), clientv3.WithLease(id))).
		Commit()
	if err != nil {
		return Lease{}, false, fmt.Errorf("store: move %s to %s: %w", mine.Key, want.Key, err)
	}
	want.EtcdLease, want.CreateRevision, want.ModRevision = int64(id), txn.Header.Revision, txn.Header.Revision
	if txn.Succeeded {
		o.log.Info("own lease moves to a new key: the network config's families changed", zap.String("old_key", mine.Key), zap.String("key", want.Key))
		if mine.EtcdLease != 0 && mine.EtcdLease != int64(id) {
			o.c.Revoke(ctx, clientv3.LeaseID(mine.EtcdLease)) // tidiness, as in takeOver
		}
	}
	return want, txn.Succeeded, nil
}

// create claims free subnets with a compare-and-create transaction.
func (o *OwnLease) create(ctx context.Context, want Lease, grant func() (clientv3.LeaseID, error)) (Lease, bool, error) {
	id, err := grant()
	if err != nil {
		return Lease{}, false, err
	}
	want.EtcdLease = int64(id)
	txn, err := o.c.Txn(ctx).
		If(o.freeKey(want, "")...).
		Then(clientv3.OpPut(want.Key, string(want.Value()), clientv3.WithLease(id))).
		Commit()
	if err != nil {
		return Lease{}, false, fmt.Errorf("store: create %s: %w", want.Key, err)
	}
	want.CreateRevision, want.ModRevision = txn.Header.Revision, txn.Header.Revision
	return want, txn.Succeeded, nil
}

// freeKey is the condition that want's key may be created: it does not
// exist, nor does another key with its IPv4 part, with or without an IPv6
// part (those share the prefix "<v4>&"), but for our own key mine (which a
// move deletes in the same transaction). A key with the same IPv6 part and
// another IPv4 part has no prefix in common with it: elder6 looks for one.
func (o *OwnLease) freeKey(want Lease, mine string) []clientv3.Cmp {
	free := func(from, to string) clientv3.Cmp {
		return clientv3.Compare(clientv3.CreateRevision(from), "=", 0).WithRange(to)
	}
	conds := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(want.Key), "=", 0)}
	if !want.Subnet.IsValid() {
		return conds
	}
	base := SubnetsPrefix(o.prefix) + SubnetKey(want.Subnet)
	if mine != base {
		conds = append(conds, clientv3.Compare(clientv3.CreateRevision(base), "=", 0))
	}
	from, end := base+"&", clientv3.GetPrefixRangeEnd(base+"&")
	if mine > from && mine < end {
		// The range around mine.
		return append(conds, free(from, mine), free(mine+"\x00", end))
	}
	return append(conds, free(from, end))
}

// elder6 returns a key, if there is one, that overlaps the IPv6 subnet of
// our key l and is older (by etcd's create revision, as every lease table
// decides).
func (o *OwnLease) elder6(ctx context.Context, l Lease) (string, error) {
	prefix := SubnetsPrefix(o.prefix)
	var elder string
	_, err := rangePages(ctx, o.c, prefix, o.pageSize, func(kv *mvccpb.KeyValue, _ int64) {
		_, p6, err := ParseLeaseKey(string(kv.Key[len(prefix):]))
		if err == nil && string(kv.Key) != l.Key && p6.IsValid() && p6.Overlaps(l.IPv6Subnet) && kv.CreateRevision < l.CreateRevision {
			elder = string(kv.Key)
		}
	})
	if err != nil {
		return "", fmt.Errorf("store: list leases: %w", err)
	}
	return elder, nil
}

func (o *OwnLease) ttlOf(ctx context.Context, l Lease) time.Duration {
	if ttl, err := o.c.TimeToLive(ctx, clientv3.LeaseID(l.EtcdLease)); err == nil && ttl.TTL > 0 {
		return time.Duration(ttl.TTL) * time.Second
	}
	return o.claim.TTL
}

// compatible4 reports whether p is an IPv4 subnet this host may hold under
// the current configuration.
func (o *OwnLease) compatible4(p netip.Prefix) bool {
	return p.Addr().Is4() && p.Bits() == o.cfg.SubnetLen && !p.Addr().Less(o.cfg.SubnetMin) && !o.cfg.SubnetMax.Less(p.Addr())
}

// compatible6 is compatible4 for IPv6.
func (o *OwnLease) compatible6(p netip.Prefix) bool {
	return p.Addr().Is6() && p.Bits() == o.cfg.IPv6SubnetLen && !p.Addr().Less(o.cfg.IPv6SubnetMin) && !o.cfg.IPv6SubnetMax.Less(p.Addr())
}

// pickFree4 returns a random free subnet between SubnetMin and SubnetMax.
func (o *OwnLease) pickFree4(taken *takenSet) (netip.Prefix, error) {
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

// maxScan6 is how many IPv6 subnets pickFree6 enumerates at most, when
// random probes found none free: a range that small may be full.
const maxScan6 = 1 << 16

// pickFree6 returns a random free subnet between IPv6SubnetMin and
// IPv6SubnetMax: random probes, then, if the range is small enough to
// enumerate (at most maxScan6 subnets, or twice the leases there are), a
// scan of it all.
func (o *OwnLease) pickFree6(taken *takenSet) (netip.Prefix, error) {
	n := o.cfg.ipv6SubnetCount()
	min, shift := u128Of(o.cfg.IPv6SubnetMin), uint(128-o.cfg.IPv6SubnetLen)
	at := func(i u128) netip.Prefix { return netip.PrefixFrom(min.add(i.shl(shift)).addr(), o.cfg.IPv6SubnetLen) }
	for range 64 {
		if p := at(randBelow(n)); !taken.overlaps(p) {
			return p, nil
		}
	}
	if limit := max(maxScan6, 2*uint64(taken.len())); n.hi == 0 && n.lo <= limit {
		var free []netip.Prefix
		for i := range n.lo {
			if p := at(u128{0, i}); !taken.overlaps(p) {
				free = append(free, p)
			}
		}
		if len(free) > 0 {
			return free[rand.IntN(len(free))], nil
		}
		return netip.Prefix{}, fmt.Errorf("store: IPv6 network %s has no free /%d subnet: all %d between %s and %s are leased: %w",
			o.cfg.IPv6Network, o.cfg.IPv6SubnetLen, n.lo, o.cfg.IPv6SubnetMin, o.cfg.IPv6SubnetMax, ErrNoFreeSubnet)
	}
	// Too many to enumerate, and so few of them leased that 64 random
	// probes all finding a leased one is as good as impossible.
	return netip.Prefix{}, fmt.Errorf("store: IPv6 network %s: 64 random /%d subnets between %s and %s were all leased: %w",
		o.cfg.IPv6Network, o.cfg.IPv6SubnetLen, o.cfg.IPv6SubnetMin, o.cfg.IPv6SubnetMax, ErrNoFreeSubnet)
}

// randBelow is a random number in [0, n), n > 0.
func randBelow(n u128) u128 {
	if n.hi == 0 {
		return u128{0, rand.Uint64N(n.lo)}
	}
	// Rejection sampling over the bits n needs: fewer than two draws on
	// average.
	mask := u128{^uint64(0) >> bits.LeadingZeros64(n.hi), ^uint64(0)}
	for {
		if r := (u128{rand.Uint64(), rand.Uint64()}).and(mask); r.less(n) {
			return r
		}
	}
}

// takenSet answers "does any lease overlap this subnet" in O(1) for leases
// of the configured length, which is nearly all of them, and whether an
// older one does. An invalid prefix (a family a key does not have)
// occupies nothing.
type takenSet struct {
	bits   int
	starts map[netip.Addr]int64 // the oldest create revision at the start
	other  []takenPrefix
}

type takenPrefix struct {
	p   netip.Prefix
	rev int64
}

func newTakenSet(bits int) *takenSet {
	return &takenSet{bits: bits, starts: make(map[netip.Addr]int64)}
}

// add records a lease of subnet p created at rev.
func (s *takenSet) add(p netip.Prefix, rev int64) {
	switch {
	case !p.IsValid():
	case p.Bits() == s.bits:
		if r, ok := s.starts[p.Addr()]; !ok || rev < r {
			s.starts[p.Addr()] = rev
		}
	default:
		s.other = append(s.other, takenPrefix{p, rev})
	}
}

func (s *takenSet) len() int { return len(s.starts) + len(s.other) }

func (s *takenSet) overlaps(p netip.Prefix) bool { return s.overlapsOlder(p, math.MaxInt64) }

// overlapsOlder reports whether a lease created before rev overlaps p.
func (s *takenSet) overlapsOlder(p netip.Prefix, rev int64) bool {
	if !p.IsValid() {
		return false
	}
	if r, ok := s.starts[p.Addr()]; ok && p.Bits() == s.bits && r < rev {
		return true
	}
	for _, o := range s.other {
		if o.rev < rev && o.p.Overlaps(p) {
			return true
		}
	}
	return false
}
