package store

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func testClaim(id byte) Claim {
	return Claim{
		PublicIP: netip.AddrFrom4([4]byte{203, 0, 113, id}),
		VtepMAC:  MAC{0xe2, 0x5a, 0x5b, 0x43, 0x22, id},
		TTL:      60 * time.Second,
	}
}

func acquire(t *testing.T, c *clientv3.Client, cfg Config, claim Claim) *OwnLease {
	t.Helper()
	o, err := AcquireLease(testCtx(t), c, testPrefix, cfg, claim, zap.NewNop())
	if err != nil {
		t.Fatalf("AcquireLease(%v): %v", claim.PublicIP, err)
	}
	return o
}

// otherHost writes a lease for subnet on behalf of another host, as flanneld
// would (bound to no etcd lease, which does not matter here).
func otherHost(t *testing.T, c *clientv3.Client, subnet string, id byte) Lease {
	t.Helper()
	l := mkLease(subnet, id, 0)
	l.PublicIP = netip.AddrFrom4([4]byte{198, 51, 100, id})
	return putLease(t, c, l)
}

func etcdLeaseCount(t *testing.T, c *clientv3.Client) int {
	t.Helper()
	resp, err := c.Leases(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	return len(resp.Leases)
}

// expectOwn checks o's lease against etcd: the key holds exactly flannel's
// value for claim, with a subnet of each family of cfg (and no other),
// bound to a live etcd lease of claim's TTL.
func expectOwn(t *testing.T, c *clientv3.Client, cfg Config, o *OwnLease, claim Claim) Lease {
	t.Helper()
	l := o.Lease()
	f4, v4 := cfg.IPv4()
	f6, v6 := cfg.IPv6()
	for _, f := range []struct {
		on     bool
		fc     FamilyConfig
		subnet netip.Prefix
	}{{v4, f4, l.Subnet}, {v6, f6, l.IPv6Subnet}} {
		if !f.on {
			if f.subnet.IsValid() {
				t.Errorf("subnet %s of a family the overlay does not have", f.subnet)
			}
			continue
		}
		if s := f.subnet; s.Bits() != f.fc.SubnetLen || s.Addr().Less(f.fc.SubnetMin) || f.fc.SubnetMax.Less(s.Addr()) || s.Masked() != s {
			t.Errorf("subnet %s is not a /%d between %s and %s", s, f.fc.SubnetLen, f.fc.SubnetMin, f.fc.SubnetMax)
		}
	}
	if want := testSubnetsPrefix + LeaseKey(l.Subnet, l.IPv6Subnet); l.Key != want {
		t.Errorf("key %q, want %q", l.Key, want)
	}
	if !v6 && strings.Contains(l.Key, "&") {
		t.Errorf("key %q has an IPv6 part, and the config has EnableIPv6 false", l.Key)
	}
	if l.PublicIP != claim.PublicIP || v4 && l.VtepMAC != claim.VtepMAC || v6 && (l.PublicIPv6 != claim.PublicIPv6 || l.VtepMACv6 != claim.VtepMACv6) || l.VNI != cfg.Backend.VNI {
		t.Errorf("lease %s does not carry the claim %+v and VNI %d", fmtLease(&l), claim, cfg.Backend.VNI)
	}
	resp := mustGet(t, c, l.Key)
	if len(resp.Kvs) != 1 {
		t.Fatalf("own lease %s is not in etcd", l.Key)
	}
	kv := resp.Kvs[0]
	if want := flannelValueFor(cfg, claim); string(kv.Value) != want {
		t.Errorf("etcd holds\n  %s\nwant flannel's\n  %s", kv.Value, want)
	}
	if kv.Lease == 0 || kv.Lease != l.EtcdLease || kv.CreateRevision != l.CreateRevision || kv.ModRevision != l.ModRevision {
		t.Errorf("own lease %s; etcd has lease %x, create %d, mod %d", fmtLease(&l), kv.Lease, kv.CreateRevision, kv.ModRevision)
	}
	ttl, err := c.TimeToLive(testCtx(t), clientv3.LeaseID(kv.Lease))
	if err != nil {
		t.Fatal(err)
	}
	if ttl.GrantedTTL != int64(claim.TTL/time.Second) || ttl.TTL <= 0 {
		t.Errorf("etcd lease of %s: granted TTL %d, remaining %d; want granted %v", l.Key, ttl.GrantedTTL, ttl.TTL, claim.TTL)
	}
	return l
}

// flannelValueFor is, written out by hand, the value flanneld's vxlan
// backend writes for a host with claim's addresses and MACs in the overlay
// of cfg (its LeaseAttrs: PublicIP "0.0.0.0" for none, PublicIPv6 null for
// none, the backend data of each family the host has).
func flannelValueFor(cfg Config, claim Claim) string {
	_, v4 := cfg.IPv4()
	_, v6 := cfg.IPv6()
	public, public6 := "0.0.0.0", "null"
	if claim.PublicIP.IsValid() {
		public = claim.PublicIP.String()
	}
	if v6 && claim.PublicIPv6.IsValid() {
		public6 = `"` + claim.PublicIPv6.String() + `"`
	}
	v := fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":%s,"BackendType":"vxlan"`, public, public6)
	if v4 {
		v += fmt.Sprintf(`,"BackendData":{"VNI":%d,"VtepMAC":"%s"}`, cfg.Backend.VNI, claim.VtepMAC)
	}
	if v6 {
		v += fmt.Sprintf(`,"BackendV6Data":{"VNI":%d,"VtepMAC":"%s"}`, cfg.Backend.VNI, claim.VtepMACv6)
	}
	return v + "}"
}

func TestAcquireLeaseFresh(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	cfg := testConfig()
	claim := testClaim(11)
	claim.VtepMAC = MAC{0xe2, 0x5a, 0x5b, 0x43, 0x22, 0x54}
	before := time.Now()
	o := acquire(t, c, cfg, claim)
	l := expectOwn(t, c, cfg, o, claim)
	if got := string(mustGet(t, c, l.Key).Kvs[0].Value); got != flannelValue {
		t.Errorf("value %s, want flannel's %s", got, flannelValue)
	}
	if exp := o.Expires(); exp.Before(before.Add(claim.TTL-2*time.Second)) || exp.After(time.Now().Add(claim.TTL)) {
		t.Errorf("Expires() = %v, want about %v from now", exp, claim.TTL)
	}
	if n := etcdLeaseCount(t, c); n != 1 {
		t.Errorf("%d etcd leases exist, want 1", n)
	}
	// Another host's table sees it as a valid lease.
	got, err := ParseLease(SubnetKey(l.Subnet), mustGet(t, c, l.Key).Kvs[0].Value)
	if err != nil || !got.SameTarget(l) {
		t.Errorf("ParseLease of own value = %s, %v", fmtLease(&got), err)
	}
}

func TestAcquireLeaseDefaultTTL(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	claim := testClaim(1)
	claim.TTL = 0
	o := acquire(t, c, testConfig(), claim)
	claim.TTL = DefaultLeaseTTL
	expectOwn(t, c, testConfig(), o, claim)
	if d := time.Until(o.Expires()); d < 23*time.Hour {
		t.Errorf("expires in %v, want about 24h", d)
	}
}

func TestAcquireLeaseReuse(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	cfg := testConfig()
	claim := testClaim(1)
	otherHost(t, c, "10.5.9.0/24", 9)
	first := expectOwn(t, c, cfg, acquire(t, c, cfg, claim), claim)

	// A restart: same public IP, same MAC. Same subnet, no write at all.
	claim.Previous = netip.MustParsePrefix("10.5.200.0/24") // an existing lease beats Previous
	again := expectOwn(t, c, cfg, acquire(t, c, cfg, claim), claim)
	if again != first {
		t.Errorf("restart got %s, want the same lease %s", fmtLease(&again), fmtLease(&first))
	}
	if kv := mustGet(t, c, first.Key).Kvs[0]; kv.ModRevision != first.ModRevision || kv.Version != 1 {
		t.Errorf("restart wrote the key: mod revision %d -> %d, version %d", first.ModRevision, kv.ModRevision, kv.Version)
	}
	if n := etcdLeaseCount(t, c); n != 1 {
		t.Errorf("%d etcd leases exist, want 1", n)
	}

	// A restart with a new VXLAN device: same subnet, same etcd lease, the
	// value updated in place.
	claim.VtepMAC = MAC{0x02, 0xaa, 0, 0, 0, 1}
	moved := expectOwn(t, c, cfg, acquire(t, c, cfg, claim), claim)
	if moved.Key != first.Key || moved.CreateRevision != first.CreateRevision || moved.EtcdLease != first.EtcdLease {
		t.Errorf("new MAC: got %s, want %s updated in place", fmtLease(&moved), fmtLease(&first))
	}
	if moved.ModRevision <= first.ModRevision {
		t.Errorf("new MAC: mod revision %d, not after %d", moved.ModRevision, first.ModRevision)
	}
	if n := etcdLeaseCount(t, c); n != 1 {
		t.Errorf("%d etcd leases exist, want 1", n)
	}

	// A restart with another TTL: same subnet, bound to a new etcd lease.
	claim.TTL = 120 * time.Second
	longer := expectOwn(t, c, cfg, acquire(t, c, cfg, claim), claim)
	if longer.Key != first.Key || longer.EtcdLease == first.EtcdLease {
		t.Errorf("new TTL: got %s", fmtLease(&longer))
	}
}

func TestAcquireLeaseKeyWithoutEtcdLease(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	cfg := testConfig()
	claim := testClaim(1)
	first := acquire(t, c, cfg, claim).Lease()
	// The key without its etcd lease, as an operator might have rewritten
	// it: taken over and bound to a lease again.
	mustPut(t, c, first.Key, string(first.Value()))
	l := expectOwn(t, c, cfg, acquire(t, c, cfg, claim), claim)
	if l.Key != first.Key || l.CreateRevision != first.CreateRevision {
		t.Errorf("got %s, want %s", fmtLease(&l), fmtLease(&first))
	}
}

func TestAcquireLeasePrevious(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	cfg := testConfig()

	claim := testClaim(1)
	claim.Previous = netip.MustParsePrefix("10.5.77.0/24")
	l := expectOwn(t, c, cfg, acquire(t, c, cfg, claim), claim)
	if l.Subnet != claim.Previous {
		t.Errorf("got %s, want the free previous subnet %s", l.Subnet, claim.Previous)
	}

	// Previous taken by another host (here: by host 1 above).
	claim2 := testClaim(2)
	claim2.Previous = claim.Previous
	l2 := expectOwn(t, c, cfg, acquire(t, c, cfg, claim2), claim2)
	if l2.Subnet.Overlaps(claim.Previous) {
		t.Errorf("got %s, which host 1 holds", l2.Subnet)
	}

	// Previous overlapped by a lease of another length.
	otherHost(t, c, "10.5.90.0/23", 50)
	claim3 := testClaim(3)
	claim3.Previous = netip.MustParsePrefix("10.5.91.0/24")
	if l3 := expectOwn(t, c, cfg, acquire(t, c, cfg, claim3), claim3); l3.Subnet.Overlaps(netip.MustParsePrefix("10.5.90.0/23")) {
		t.Errorf("got %s, which overlaps another host's /23", l3.Subnet)
	}

	// Previous not usable under this config: ignored. The random subnet
	// taken instead overlaps a /25 or /23 previous by chance once in about
	// a hundred runs; a previous that is not ignored does every time. So an
	// overlap is dropped and drawn again, and only three in a row fail.
	for i, p := range []string{"10.5.0.0/24", "10.5.78.0/25", "10.6.1.0/24", "10.5.80.0/23"} {
		claim := testClaim(byte(10 + i))
		claim.Previous = netip.MustParsePrefix(p)
		for draw := 1; ; draw++ {
			l := expectOwn(t, c, cfg, acquire(t, c, cfg, claim), claim)
			if !l.Subnet.Overlaps(claim.Previous) {
				break
			}
			if draw == 3 {
				t.Errorf("previous %s: got %s, three draws in a row", p, l.Subnet)
				break
			}
			mustDelete(t, c, l.Key)
		}
	}
}

func TestAcquireLeaseIncompatibleOwnLease(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	cfg := testConfig()
	claim := testClaim(1)
	// A lease with our public IP from a time when SubnetLen was 25: not
	// ours under this config, and it still occupies its addresses.
	old := mkLease("10.5.30.0/25", 1, 0)
	old.PublicIP, old.VtepMAC = claim.PublicIP, claim.VtepMAC
	putLease(t, c, old)
	claim.Previous = netip.MustParsePrefix("10.5.30.0/24")
	l := expectOwn(t, c, cfg, acquire(t, c, cfg, claim), claim)
	if l.Subnet.Overlaps(old.Subnet) {
		t.Errorf("got %s, overlapping the /25 still in etcd", l.Subnet)
	}
}

func TestAcquireLeaseConcurrent(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	// 63 subnets for 50 hosts starting at once: random picks collide, and
	// the compare-and-create must sort them out.
	cfg := mustParseConfig(t, `{"Network":"10.5.0.0/18","Backend":{"Type":"vxlan"}}`)
	if cfg.SubnetCount() != 63 {
		t.Fatalf("SubnetCount = %d", cfg.SubnetCount())
	}
	const hosts = 50
	leases := make([]Lease, hosts)
	var wg sync.WaitGroup
	for i := range hosts {
		wg.Go(func() {
			o, err := AcquireLease(testCtx(t), c, testPrefix, cfg, testClaim(byte(i+1)), zap.NewNop())
			if err != nil {
				t.Errorf("host %d: %v", i+1, err)
				return
			}
			leases[i] = o.Lease()
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	seen := map[netip.Prefix]int{}
	for i, l := range leases {
		if j, dup := seen[l.Subnet]; dup {
			t.Errorf("hosts %d and %d both got %s", j+1, i+1, l.Subnet)
		}
		seen[l.Subnet] = i
		claim := testClaim(byte(i + 1))
		expectOwn(t, c, cfg, &OwnLease{lease: l}, claim)
	}
	resp, err := c.Get(testCtx(t), testSubnetsPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != hosts {
		t.Errorf("etcd holds %d leases (%v), want %d", resp.Count, err, hosts)
	}
	// Leases granted for subnets lost to a faster host were given back.
	if n := etcdLeaseCount(t, c); n != hosts {
		t.Errorf("%d etcd leases exist for %d hosts", n, hosts)
	}
}

func TestAcquireLeaseExhausted(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	cfg := mustParseConfig(t, `{"Network":"10.9.0.0/28","SubnetLen":30,"Backend":{"Type":"vxlan"}}`)
	got := map[netip.Prefix]bool{}
	for i := range cfg.SubnetCount() {
		claim := testClaim(byte(i + 1))
		got[expectOwn(t, c, cfg, acquire(t, c, cfg, claim), claim).Subnet] = true
	}
	for _, s := range []string{"10.9.0.4/30", "10.9.0.8/30", "10.9.0.12/30"} {
		if !got[netip.MustParsePrefix(s)] {
			t.Errorf("%s not handed out; got %v", s, got)
		}
	}
	o, err := AcquireLease(testCtx(t), c, testPrefix, cfg, testClaim(99), zap.NewNop())
	if err == nil {
		l := o.Lease()
		t.Fatalf("AcquireLease in a full network got %s", fmtLease(&l))
	}
	for _, want := range []string{"10.9.0.0/28", "/30", "all 3", "10.9.0.4", "10.9.0.12"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if n := etcdLeaseCount(t, c); n != 3 {
		t.Errorf("%d etcd leases exist, want 3", n)
	}
	// A host that already holds a subnet still gets it back.
	claim := testClaim(2)
	expectOwn(t, c, cfg, acquire(t, c, cfg, claim), claim)
}

func TestAcquireLeaseCanceled(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if o, err := AcquireLease(ctx, c, testPrefix, testConfig(), testClaim(1), zap.NewNop()); err == nil {
		l := o.Lease()
		t.Fatalf("AcquireLease with a canceled context got %s", fmtLease(&l))
	}
}

// The next three tests lose a race at the moment another host could write:
// between the list and the compare-and-create, or before a take-over.

func TestAcquireLeaseLosesLastSubnet(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	cfg := mustParseConfig(t, `{"Network":"10.9.0.0/28","SubnetLen":30,"Backend":{"Type":"vxlan"}}`)
	otherHost(t, c, "10.9.0.4/30", 4)
	otherHost(t, c, "10.9.0.8/30", 8)
	hl := &hookLease{Lease: c.Lease}
	var once sync.Once
	hl.afterGrant = func() { once.Do(func() { otherHost(t, c, "10.9.0.12/30", 12) }) }
	o, err := AcquireLease(testCtx(t), withLease(c, hl), testPrefix, cfg, testClaim(1), zap.NewNop())
	if err == nil {
		l := o.Lease()
		t.Fatalf("got %s in a network that filled up", fmtLease(&l))
	}
	if !strings.Contains(err.Error(), "no free /30 subnet") {
		t.Errorf("error %q", err)
	}
	if kv := mustGet(t, c, testSubnetsPrefix+"10.9.0.12-30").Kvs; len(kv) != 1 || !strings.Contains(string(kv[0].Value), "198.51.100.12") {
		t.Errorf("the winner's lease was overwritten: %v", kv)
	}
	// The etcd lease granted for the lost subnet was given back.
	if n := etcdLeaseCount(t, c); n != 0 {
		t.Errorf("%d etcd leases left behind", n)
	}
}

func TestAcquireLeaseLosesToItsTwin(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	cfg := mustParseConfig(t, `{"Network":"10.9.0.0/28","SubnetLen":30,"Backend":{"Type":"vxlan"}}`)
	otherHost(t, c, "10.9.0.4/30", 4)
	otherHost(t, c, "10.9.0.8/30", 8)
	claim := testClaim(1)
	// A twin (this host's previous incarnation, say) publishes exactly our
	// claim while we are about to create it: we take it over as it is.
	twin := mkLease("10.9.0.12/30", 1, 0)
	twin.PublicIP, twin.VtepMAC = claim.PublicIP, claim.VtepMAC
	var twinLease clientv3.LeaseID
	hl := &hookLease{Lease: c.Lease}
	var once sync.Once
	hl.afterGrant = func() {
		once.Do(func() {
			g, err := c.Grant(context.Background(), int64(claim.TTL/time.Second))
			if err != nil {
				t.Error(err)
				return
			}
			twinLease = g.ID
			if _, err := c.Put(context.Background(), twin.Key, string(twin.Value()), clientv3.WithLease(g.ID)); err != nil {
				t.Error(err)
			}
		})
	}
	o, err := AcquireLease(testCtx(t), withLease(c, hl), testPrefix, cfg, claim, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	l := expectOwn(t, c, cfg, o, claim)
	if l.Key != twin.Key || l.EtcdLease != int64(twinLease) {
		t.Errorf("got %s, want the twin's lease on etcd lease %x", fmtLease(&l), twinLease)
	}
	if kv := mustGet(t, c, twin.Key).Kvs[0]; kv.Version != 1 {
		t.Errorf("the twin's key was rewritten (version %d)", kv.Version)
	}
	if n := etcdLeaseCount(t, c); n != 1 {
		t.Errorf("%d etcd leases exist, want only the twin's", n)
	}
}

func TestAcquireLeaseTakeOverRace(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	cfg := testConfig()
	claim := testClaim(1)
	first := acquire(t, c, cfg, claim).Lease()

	// Restarting with a new MAC, this host is about to update its key in
	// place when another host writes the key: the update must not land.
	claim.VtepMAC = MAC{0x02, 0xbb, 0, 0, 0, 1}
	expectTakeOverLost(t, c, cfg, claim, first)
}

// expectTakeOverLost acquires a lease for claim, with another host writing
// the key of first, our lease, just before we would rewrite it: we must not,
// and take another subnet.
func expectTakeOverLost(t *testing.T, c *clientv3.Client, cfg Config, claim Claim, first Lease) {
	t.Helper()
	theirs := mkLease(first.Subnet.String(), 66, 0)
	theirs.PublicIP = netip.MustParseAddr("198.51.100.66")
	hl := &hookLease{Lease: c.Lease}
	var once sync.Once
	hl.beforeTimeToLive = func() {
		once.Do(func() {
			if _, err := c.Put(context.Background(), first.Key, string(theirs.Value())); err != nil {
				t.Error(err)
			}
		})
	}
	o, err := AcquireLease(testCtx(t), withLease(c, hl), testPrefix, cfg, claim, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	l := expectOwn(t, c, cfg, o, claim)
	if l.Subnet == first.Subnet {
		t.Errorf("kept %s, which another host wrote", l.Subnet)
	}
	if got := mustGet(t, c, first.Key).Kvs; len(got) != 1 || string(got[0].Value) != string(theirs.Value()) {
		t.Errorf("the other host's key was deleted or overwritten: %v", got)
	}
}

// runHold runs o.Hold until the test ends or stop is called.
func runHold(t *testing.T, o *OwnLease, margin time.Duration) (done <-chan error, stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch := make(chan error, 1)
	go func() { ch <- o.Hold(ctx, margin) }()
	return ch, cancel
}

func holdResult(t *testing.T, done <-chan error, timeout time.Duration) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(timeout):
		t.Fatalf("Hold did not return within %v", timeout)
		return nil
	}
}

func expectHolding(t *testing.T, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		t.Fatalf("Hold returned %v", err)
	default:
	}
}

func TestHoldRenews(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	cfg := testConfig()
	claim := testClaim(1)
	claim.TTL = 3 * time.Second
	start := time.Now()
	o := acquire(t, c, cfg, claim)
	l := expectOwn(t, c, cfg, o, claim)
	expires := o.Expires()
	done, stop := runHold(t, o, 3*time.Second) // capped at TTL/2: renewed every 1.5 s

	// Renewed before it expires, by keepalive: the same key and etcd lease.
	eventually(t, 5*time.Second, func() bool { return o.Expires().After(expires.Add(500 * time.Millisecond)) },
		"Expires() still %v", o.Expires())
	ttl, err := c.TimeToLive(testCtx(t), clientv3.LeaseID(l.EtcdLease))
	if err != nil {
		t.Fatal(err)
	}
	if ttl.TTL < 2 || ttl.GrantedTTL != 3 {
		t.Errorf("after renewal the etcd lease has TTL %d of %d, want 2 or 3 of 3", ttl.TTL, ttl.GrantedTTL)
	}

	// Well past the first expiry (three renewals in a row), it is still
	// there, never re-created.
	for time.Since(start) < 7*claim.TTL/4 {
		kv := mustGet(t, c, l.Key).Kvs
		if len(kv) != 1 || kv[0].Lease != l.EtcdLease || kv[0].CreateRevision != l.CreateRevision {
			t.Fatalf("after %v the key is %v, want it kept on etcd lease %x", time.Since(start), kv, l.EtcdLease)
		}
		expectHolding(t, done)
		time.Sleep(100 * time.Millisecond)
	}
	if now := o.Lease(); now.Key != l.Key || now.EtcdLease != l.EtcdLease {
		t.Errorf("lease changed from %s to %s", fmtLease(&l), fmtLease(&now))
	}
	if d := time.Until(o.Expires()); d <= 0 || d > claim.TTL {
		t.Errorf("Expires() in %v", d)
	}
	stop()
	if err := holdResult(t, done, 5*time.Second); !errors.Is(err, context.Canceled) {
		t.Errorf("Hold returned %v after cancel, want context.Canceled", err)
	}
}

func TestHoldRecreatesDeletedKey(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	cfg := testConfig()
	claim := testClaim(1)
	otherHost(t, c, "10.5.3.0/24", 3)
	o := acquire(t, c, cfg, claim)
	l := o.Lease()
	core, logs := observer.New(zapcore.DebugLevel)
	o.log = zap.New(core)
	done, _ := runHold(t, o, time.Second)

	mustDelete(t, c, l.Key)
	o.Recheck()
	o.Recheck() // never blocks
	eventually(t, 10*time.Second, func() bool { return len(mustGet(t, c, l.Key).Kvs) == 1 }, "key not re-created")
	eventually(t, 10*time.Second, func() bool { return o.Lease().ModRevision != l.ModRevision }, "Lease() not updated")
	now := expectOwn(t, c, cfg, o, claim)
	if now.Subnet != l.Subnet {
		t.Errorf("re-created as %s, want the same subnet %s", now.Subnet, l.Subnet)
	}
	if logs.FilterMessageSnippet("own lease vanished").Len() != 1 {
		t.Errorf("logs: %v", logs.All())
	}
	expectHolding(t, done)

	// Revoking the etcd lease takes the key with it: the same again.
	if _, err := c.Revoke(testCtx(t), clientv3.LeaseID(now.EtcdLease)); err != nil {
		t.Fatal(err)
	}
	o.Recheck()
	eventually(t, 10*time.Second, func() bool { return o.Lease().EtcdLease != now.EtcdLease }, "not re-created after revoke")
	if again := expectOwn(t, c, cfg, o, claim); again.Subnet != l.Subnet {
		t.Errorf("re-created as %s, want %s", again.Subnet, l.Subnet)
	}
	expectHolding(t, done)
}

func TestHoldRepairsOwnKey(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	cfg := testConfig()
	claim := testClaim(1)
	o := acquire(t, c, cfg, claim)
	l := o.Lease()
	done, _ := runHold(t, o, time.Second)

	repaired := func(what string) {
		t.Helper()
		o.Recheck()
		want := string(l.Value())
		eventually(t, 10*time.Second, func() bool {
			kv := mustGet(t, c, l.Key).Kvs
			return len(kv) == 1 && string(kv[0].Value) == want && kv[0].Lease != 0
		}, "own key not repaired after %s", what)
		eventually(t, 10*time.Second, func() bool {
			return o.Lease().ModRevision == mustGet(t, c, l.Key).Kvs[0].ModRevision
		}, "Lease() not updated after %s", what)
		if now := expectOwn(t, c, cfg, o, claim); now.Subnet != l.Subnet {
			t.Errorf("after %s: subnet %s, want %s", what, now.Subnet, l.Subnet)
		}
		expectHolding(t, done)
	}
	mustPut(t, c, l.Key, "garbage")
	repaired("an unreadable value")
	other := l
	other.VtepMAC = MAC{0x02, 0, 0, 0, 0, 0x99}
	mustPut(t, c, l.Key, string(other.Value()))
	repaired("another MAC with our public IP")
	mustPut(t, c, l.Key, string(l.Value()))
	repaired("our value without an etcd lease")
}

// TestHoldConflict: another writer rewrites this host's key with another
// host's value. Hold does not give up, nor overwrite it: it reports the
// conflict with both values, and takes the subnet back when the key is
// free again. Stopping while in conflict revokes the etcd lease that no
// longer holds the key.
func TestHoldConflict(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	cfg := testConfig()
	claim := testClaim(1)
	o := acquire(t, c, cfg, claim)
	l := o.Lease()
	core, logs := observer.New(zapcore.DebugLevel)
	o.log = zap.New(core)
	done, stop := runHold(t, o, time.Second)

	theirs := mkLease(l.Subnet.String(), 77, 0)
	theirs.PublicIP = netip.MustParseAddr("198.51.100.77")
	mustPut(t, c, l.Key, string(theirs.Value()))
	o.Recheck()
	eventually(t, 10*time.Second, func() bool { err, _ := o.Conflict(); return err != nil }, "no conflict reported")
	err, _ := o.Conflict()
	if !errors.Is(err, ErrSubnetTaken) || !strings.Contains(err.Error(), l.Key) || !strings.Contains(err.Error(), "198.51.100.77") {
		t.Errorf("conflict %v does not name the key and the other host", err)
	}
	if n := logs.FilterMessageSnippet("held by another writer").Len(); n != 1 {
		t.Errorf("%d conflict log lines, want 1: %v", n, logs.All())
	}
	o.Recheck()
	time.Sleep(100 * time.Millisecond) // another check, which must not overwrite
	if got := string(mustGet(t, c, l.Key).Kvs[0].Value); got != string(theirs.Value()) {
		t.Errorf("the other writer's value was overwritten with %s", got)
	}
	expectHolding(t, done)

	// The key becomes free: taken back, the same subnet.
	mustDelete(t, c, l.Key)
	o.Recheck()
	eventually(t, 10*time.Second, func() bool { err, _ := o.Conflict(); return err == nil }, "conflict not cleared")
	if now := expectOwn(t, c, cfg, o, claim); now.Subnet != l.Subnet {
		t.Errorf("taken back as %s, want %s", now.Subnet, l.Subnet)
	}
	if logs.FilterMessageSnippet("is ours again in etcd").Len() != 1 {
		t.Errorf("no log line says the subnet is ours again: %v", logs.All())
	}

	// Rewritten again, and vtepd stops: its etcd lease is revoked.
	mustPut(t, c, l.Key, string(theirs.Value()))
	o.Recheck()
	eventually(t, 10*time.Second, func() bool { err, _ := o.Conflict(); return err != nil }, "second conflict not reported")
	held := o.Lease().EtcdLease
	stop()
	if err := holdResult(t, done, 5*time.Second); !errors.Is(err, context.Canceled) {
		t.Errorf("Hold returned %v, want context.Canceled", err)
	}
	if ttl, err := c.TimeToLive(testCtx(t), clientv3.LeaseID(held)); err != nil || ttl.TTL > 0 {
		t.Errorf("own etcd lease %x after stopping in conflict: TTL %v (%v), want revoked", held, ttl.TTL, err)
	}
	if got := string(mustGet(t, c, l.Key).Kvs[0].Value); got != string(theirs.Value()) {
		t.Errorf("stopping removed the other writer's key: %s", got)
	}
}

// TestHoldConflictClearedByOwnValue: the key rewritten back with this
// host's own attributes ends the conflict, without a write of ours.
func TestHoldConflictClearedByOwnValue(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	cfg := testConfig()
	claim := testClaim(1)
	o := acquire(t, c, cfg, claim)
	l := o.Lease()
	done, _ := runHold(t, o, time.Second)
	theirs := mkLease(l.Subnet.String(), 77, 0)
	theirs.PublicIP = netip.MustParseAddr("198.51.100.77")
	mustPut(t, c, l.Key, string(theirs.Value()))
	o.Recheck()
	eventually(t, 10*time.Second, func() bool { err, _ := o.Conflict(); return err != nil }, "no conflict reported")
	mustPut(t, c, l.Key, string(l.Value()), clientv3.WithLease(clientv3.LeaseID(l.EtcdLease)))
	o.Recheck()
	eventually(t, 10*time.Second, func() bool { err, _ := o.Conflict(); return err == nil }, "conflict not cleared by our own value")
	expectOwn(t, c, cfg, o, claim)
	expectHolding(t, done)
}

// TestHoldConflictByOverlap: the key vanishes and another lease takes a
// subnet over ours: a conflict, not another subnet; taken back once the
// other lease goes.
func TestHoldConflictByOverlap(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	cfg := testConfig()
	claim := testClaim(1)
	o := acquire(t, c, cfg, claim)
	l := o.Lease()
	done, _ := runHold(t, o, time.Second)

	mustDelete(t, c, l.Key)
	big := netip.PrefixFrom(l.Subnet.Addr(), 23).Masked()
	bigLease := otherHost(t, c, big.String(), 88)
	o.Recheck()
	eventually(t, 10*time.Second, func() bool { err, _ := o.Conflict(); return err != nil }, "no conflict reported")
	if err, _ := o.Conflict(); !strings.Contains(err.Error(), l.Subnet.String()) {
		t.Errorf("conflict %q does not name the subnet", err)
	}
	if kv := mustGet(t, c, l.Key).Kvs; len(kv) != 0 {
		t.Errorf("Hold re-created %s inside another host's %s", l.Key, big)
	}
	expectHolding(t, done)
	mustDelete(t, c, bigLease.Key)
	o.Recheck()
	eventually(t, 10*time.Second, func() bool { err, _ := o.Conflict(); return err == nil }, "not taken back")
	if now := expectOwn(t, c, cfg, o, claim); now.Subnet != l.Subnet {
		t.Errorf("taken back as %s, want %s", now.Subnet, l.Subnet)
	}
}

// TestAcquireLeasePaged: the lease list is read in pages, and a full
// network is judged by all of them: the host's own lease is found on
// whichever page it is, and a new subnet is one no page showed taken.
func TestAcquireLeasePaged(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	cfg := testConfig() // 10.5.1.0 to 10.5.255.0: 255 subnets
	claim := testClaim(1)
	free := map[netip.Prefix]bool{netip.MustParsePrefix("10.5.100.0/24"): true, netip.MustParsePrefix("10.5.200.0/24"): true}
	own := netip.MustParsePrefix("10.5.150.0/24")
	for i := 1; i <= 255; i++ {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 5, byte(i), 0}), 24)
		if free[p] {
			continue
		}
		l := otherHost(t, c, p.String(), byte(i))
		if p == own {
			l.PublicIP, l.VtepMAC = claim.PublicIP, claim.VtepMAC
			putLease(t, c, l)
		}
	}
	acquirePaged := func(claim Claim) Lease {
		t.Helper()
		o := &OwnLease{c: c, prefix: testPrefix, cfg: cfg, claim: claim, log: zap.NewNop(), recheck: make(chan struct{}, 1), pageSize: 7}
		if err := o.acquire(testCtx(t)); err != nil {
			t.Fatalf("acquire in pages of 7: %v", err)
		}
		return o.Lease()
	}
	if l := acquirePaged(claim); l.Subnet != own {
		t.Errorf("restart took %s, want its own lease %s from the list's 22nd page", l.Subnet, own)
	}
	for id := range byte(2) {
		l := acquirePaged(testClaim(2 + id))
		if !free[l.Subnet] {
			t.Fatalf("a new host took %s, which is not one of the free subnets %v", l.Subnet, free)
		}
		delete(free, l.Subnet)
	}
}
