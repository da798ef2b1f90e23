package store

import (
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// The acquisition of dual-stack and IPv6-only leases, against etcd.

const (
	dualJSON = `{"EnableIPv6":true,"Network":"10.5.0.0/16","IPv6Network":"fd00:10::/48","Backend":{"Type":"vxlan"}}`
	v6JSON   = `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10::/48","Backend":{"Type":"vxlan"}}`
)

// testClaim6 is testClaim with an IPv6 underlay address and device.
func testClaim6(id byte) Claim {
	c := testClaim(id)
	c.PublicIPv6 = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: id})
	c.VtepMACv6 = MAC{0xe2, 0x5a, 0x5b, 0x43, 0x66, id}
	return c
}

// subnetsKeys returns every key under the subnets prefix.
func subnetsKeys(t *testing.T, c *clientv3.Client) []string {
	t.Helper()
	resp, err := c.Get(testCtx(t), testSubnetsPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, kv := range resp.Kvs {
		keys = append(keys, string(kv.Key))
	}
	return keys
}

func TestAcquireLeaseDualStackFresh(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	cfg := mustParseConfig(t, dualJSON)
	claim := testClaim6(11)
	l := expectOwn(t, c, cfg, acquire(t, c, cfg, claim), claim)
	if !strings.Contains(l.Key, "&fd00:10:") || !l.Subnet.IsValid() || !l.IPv6Subnet.IsValid() {
		t.Errorf("dual-stack lease %s", fmtLease(&l))
	}
	// Another host's table, and flanneld's way of reading it, see both parts.
	tb := NewTable(cfg)
	s := &syncer{t: tb, prefix: testSubnetsPrefix, log: zap.NewNop(), warned: map[string]int64{}}
	kv := mustGet(t, c, l.Key).Kvs[0]
	got, err := s.parseKV(kv)
	if err != nil || got != l {
		t.Errorf("a peer reads %s, %v; want %s", fmtLease(&got), err, fmtLease(&l))
	}
	if v4, v6, ok := flannelParseSubnetKey(l.Key); !ok || v4 != l.Subnet || v6 != l.IPv6Subnet {
		t.Errorf("flannel reads the key %s as %s, %s, %v", l.Key, v4, v6, ok)
	}
	if n := etcdLeaseCount(t, c); n != 1 {
		t.Errorf("%d etcd leases exist, want 1", n)
	}
}

func TestAcquireLeaseDualStackReuse(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	cfg := mustParseConfig(t, dualJSON)
	claim := testClaim6(1)
	otherHost(t, c, "10.5.9.0/24", 9)
	first := expectOwn(t, c, cfg, acquire(t, c, cfg, claim), claim)

	// A restart: same addresses and MACs. Same subnets, no write at all,
	// whatever the subnet file says.
	claim.Previous, claim.PreviousIPv6 = netip.MustParsePrefix("10.5.200.0/24"), netip.MustParsePrefix("fd00:10:0:200::/64")
	again := expectOwn(t, c, cfg, acquire(t, c, cfg, claim), claim)
	if again != first {
		t.Errorf("restart got %s, want %s", fmtLease(&again), fmtLease(&first))
	}
	if kv := mustGet(t, c, first.Key).Kvs[0]; kv.Version != 1 {
		t.Errorf("restart wrote the key: version %d", kv.Version)
	}
	// New devices: the same key and etcd lease, the value updated in place.
	claim.VtepMAC, claim.VtepMACv6 = MAC{0x02, 0xaa, 0, 0, 0, 1}, MAC{0x02, 0xaa, 0, 0, 0, 6}
	moved := expectOwn(t, c, cfg, acquire(t, c, cfg, claim), claim)
	if moved.Key != first.Key || moved.EtcdLease != first.EtcdLease || moved.ModRevision <= first.ModRevision {
		t.Errorf("new MACs: got %s, want %s updated in place", fmtLease(&moved), fmtLease(&first))
	}
	if n := etcdLeaseCount(t, c); n != 1 {
		t.Errorf("%d etcd leases exist, want 1", n)
	}
}

// TestAcquireLeaseUpgradeToDualStack: a host whose IPv4 lease predates
// IPv6 keeps its IPv4 subnet and gains an IPv6 one under a new key, the old
// key deleted in the same transaction; back to IPv4-only, the IPv6 part
// goes the same way.
func TestAcquireLeaseUpgradeToDualStack(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	v4cfg := mustParseConfig(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`)
	cfg := mustParseConfig(t, dualJSON)
	claim := testClaim6(1)
	old := expectOwn(t, c, v4cfg, acquire(t, c, v4cfg, claim), claim)
	if strings.Contains(old.Key, "&") {
		t.Fatalf("IPv4-only config, key %s", old.Key)
	}

	claim.PreviousIPv6 = netip.MustParsePrefix("fd00:10:0:77::/64")
	up := expectOwn(t, c, cfg, acquire(t, c, cfg, claim), claim)
	if up.Subnet != old.Subnet || up.IPv6Subnet != claim.PreviousIPv6 || up.Key == old.Key {
		t.Errorf("upgraded to %s, want %s with %s", fmtLease(&up), old.Subnet, claim.PreviousIPv6)
	}
	if kvs := mustGet(t, c, old.Key).Kvs; len(kvs) != 0 {
		t.Errorf("the old key is still there: %s", kvs[0].Value)
	}
	// One transaction: the old key was there just before the new one was
	// created, and gone at that very revision.
	before, err := c.Get(testCtx(t), old.Key, clientv3.WithRev(up.CreateRevision-1))
	if err != nil {
		t.Fatal(err)
	}
	at, err := c.Get(testCtx(t), old.Key, clientv3.WithRev(up.CreateRevision))
	if err != nil {
		t.Fatal(err)
	}
	if len(before.Kvs) != 1 || len(at.Kvs) != 0 {
		t.Errorf("old key at revision %d: %d, at %d: %d; want deleted by the transaction that created %s",
			up.CreateRevision-1, len(before.Kvs), up.CreateRevision, len(at.Kvs), up.Key)
	}
	if up.EtcdLease != old.EtcdLease || etcdLeaseCount(t, c) != 1 {
		t.Errorf("etcd lease %x (was %x), %d in all: want the same one, alone", up.EtcdLease, old.EtcdLease, etcdLeaseCount(t, c))
	}

	// And back: the IPv6 part goes, the IPv4 subnet stays, no & key is left.
	down := expectOwn(t, c, v4cfg, acquire(t, c, v4cfg, claim), claim)
	if down.Subnet != old.Subnet {
		t.Errorf("back to IPv4-only: %s, want %s", fmtLease(&down), old.Subnet)
	}
	for _, k := range subnetsKeys(t, c) {
		if strings.Contains(k, "&") {
			t.Errorf("key %s left with an IPv6 part", k)
		}
	}
}

// TestAcquireLeaseTwoLeasesOfOurs: of two leases of ours (one left from an
// IPv4-only past), the one with the config's families is kept as it is,
// and the other occupies its subnet still.
func TestAcquireLeaseTwoLeasesOfOurs(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	cfg := mustParseConfig(t, dualJSON)
	claim := testClaim6(1)
	old := mkLease("10.5.1.0/24", 1, 0)
	old.PublicIP, old.VtepMAC = claim.PublicIP, claim.VtepMAC
	putLease(t, c, old)
	dual := mkLease6("10.5.2.0/24", "fd00:10:0:2::/64", 1, 0)
	dual.PublicIP, dual.VtepMAC, dual.PublicIPv6, dual.VtepMACv6 = claim.PublicIP, claim.VtepMAC, claim.PublicIPv6, claim.VtepMACv6
	dual = putLease(t, c, dual)
	l := expectOwn(t, c, cfg, acquire(t, c, cfg, claim), claim)
	// (Bound to an etcd lease now: putLease wrote it without one.)
	if l.Key != dual.Key || l.CreateRevision != dual.CreateRevision {
		t.Errorf("got %s, want the dual-stack lease %s kept", fmtLease(&l), fmtLease(&dual))
	}
	if len(mustGet(t, c, old.Key).Kvs) != 1 {
		t.Errorf("the IPv4-only lease of ours went")
	}
}

// TestAcquireLeaseUpgradeRace: the old key rewritten by someone else
// between the list and the move: the move does not land.
func TestAcquireLeaseUpgradeRace(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	v4cfg := mustParseConfig(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`)
	cfg := mustParseConfig(t, dualJSON)
	claim := testClaim6(1)
	old := acquire(t, c, v4cfg, claim).Lease()
	expectTakeOverLost(t, c, cfg, claim, old)
}

func TestAcquireLeaseIPv6Only(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	cfg := mustParseConfig(t, v6JSON)

	// An IPv6 underlay and no IPv4 address: flannel's form of the key and
	// value, the host found again by its PublicIPv6.
	claim := testClaim6(1)
	claim.PublicIP, claim.VtepMAC = netip.Addr{}, MAC{}
	l := expectOwn(t, c, cfg, acquire(t, c, cfg, claim), claim)
	if !strings.HasPrefix(l.Key, testSubnetsPrefix+"0.0.0.0-0&fd00:10:") {
		t.Errorf("key %s, want flannel's 0.0.0.0-0&...", l.Key)
	}
	if got := string(mustGet(t, c, l.Key).Kvs[0].Value); !strings.HasPrefix(got, `{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::1",`) || strings.Contains(got, `"BackendData"`) {
		t.Errorf("value %s", got)
	}
	if again := expectOwn(t, c, cfg, acquire(t, c, cfg, claim), claim); again != l {
		t.Errorf("restart got %s, want %s", fmtLease(&again), fmtLease(&l))
	}
	// Another such host does not take it for its own (flannel's IPv6-only
	// etcd mode matches on PublicIP, 0.0.0.0 for all of them).
	other := testClaim6(2)
	other.PublicIP, other.VtepMAC = netip.Addr{}, MAC{}
	if ol := expectOwn(t, c, cfg, acquire(t, c, cfg, other), other); ol.Key == l.Key || ol.IPv6Subnet.Overlaps(l.IPv6Subnet) {
		t.Errorf("the second IPv6-only host got %s, the first holds %s", fmtLease(&ol), fmtLease(&l))
	}

	// IPv6 over an IPv4 underlay: PublicIP, PublicIPv6 null.
	v4under := testClaim6(3)
	v4under.PublicIPv6, v4under.VtepMAC = netip.Addr{}, MAC{}
	ul := expectOwn(t, c, cfg, acquire(t, c, cfg, v4under), v4under)
	if p, _ := ul.IPv6(); p.PublicIP != v4under.PublicIP {
		t.Errorf("IPv6 over IPv4: the part goes to %s", p.PublicIP)
	}
	if n := len(subnetsKeys(t, c)); n != 3 {
		t.Errorf("%d keys for 3 hosts", n)
	}
}

// TestAcquireLeaseNoIPv6KeyWhenOff: a host that could do IPv6 (a claim
// with IPv6 parts, a previous IPv6 subnet) in an overlay without IPv6
// writes no key with an IPv6 part: a flanneld with IPv6 off may crash on
// one.
func TestAcquireLeaseNoIPv6KeyWhenOff(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	cfg := testConfig()
	held := map[netip.Prefix]bool{}
	for i := range 5 {
		claim := testClaim6(byte(i + 1))
		claim.PreviousIPv6 = netip.MustParsePrefix("fd00:10:0:1::/64")
		o := acquire(t, c, cfg, claim)
		l := o.Lease()
		if l.IPv6Subnet.IsValid() || l.PublicIPv6.IsValid() || l.VtepMACv6 != (MAC{}) {
			t.Errorf("lease %s has an IPv6 part", fmtLease(&l))
		}
		held[l.Subnet] = true
		expectOwn(t, c, cfg, o, claim)
	}
	// A dual-stack lease of ours left from a dual-stack past moves too. Its
	// IPv4 subnet must be one the random picks above left free: an older
	// lease on it would rightly send us elsewhere (a fixed 10.5.99.0/24
	// failed about one run in fifty that way).
	free4 := netip.MustParsePrefix("10.5.99.0/24")
	for n := byte(100); held[free4]; n++ {
		free4 = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 5, n, 0}), 24)
	}
	claim := testClaim6(9)
	dual := mkLease6(free4.String(), "fd00:10:0:99::/64", 9, 0)
	dual.PublicIP, dual.VtepMAC, dual.PublicIPv6, dual.VtepMACv6 = claim.PublicIP, claim.VtepMAC, claim.PublicIPv6, claim.VtepMACv6
	putLease(t, c, dual)
	if l := expectOwn(t, c, cfg, acquire(t, c, cfg, claim), claim); l.Subnet != dual.Subnet {
		t.Errorf("got %s, want %s kept", fmtLease(&l), dual.Subnet)
	}
	for _, k := range subnetsKeys(t, c) {
		if strings.Contains(k, "&") {
			t.Errorf("key %s has an IPv6 part", k)
		}
	}
}

// TestAcquireLeaseConcurrentDualStack: 50 hosts starting at once, 63
// subnets of each family: random picks collide in each, and no two hosts
// end up sharing a subnet of either. The same for IPv6-only hosts.
func TestAcquireLeaseConcurrentDualStack(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ name, doc string }{
		{"dual-stack", `{"EnableIPv6":true,"Network":"10.5.0.0/18","IPv6Network":"fd00:10::/58","Backend":{"Type":"vxlan"}}`},
		{"IPv6-only", `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10::/58","Backend":{"Type":"vxlan"}}`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := startEtcd(t)
			cfg := mustParseConfig(t, tt.doc)
			if cfg.ipv6SubnetCount() != (u128{0, 63}) {
				t.Fatalf("%d IPv6 subnets", cfg.ipv6SubnetCount().lo)
			}
			const hosts = 50
			leases := make([]Lease, hosts)
			claims := make([]Claim, hosts)
			var wg sync.WaitGroup
			for i := range hosts {
				claims[i] = testClaim6(byte(i + 1))
				if !cfg.Network.IsValid() {
					claims[i].PublicIP, claims[i].VtepMAC = netip.Addr{}, MAC{}
				}
				wg.Go(func() {
					o, err := AcquireLease(testCtx(t), c, testPrefix, cfg, claims[i], zap.NewNop())
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
			seen4, seen6 := map[netip.Prefix]int{}, map[netip.Prefix]int{}
			for i, l := range leases {
				for _, f := range []struct {
					seen map[netip.Prefix]int
					p    netip.Prefix
				}{{seen4, l.Subnet}, {seen6, l.IPv6Subnet}} {
					if !f.p.IsValid() {
						continue
					}
					if j, dup := f.seen[f.p]; dup {
						t.Errorf("hosts %d and %d both got %s", j+1, i+1, f.p)
					}
					f.seen[f.p] = i
				}
				expectOwn(t, c, cfg, &OwnLease{lease: l}, claims[i])
			}
			if len(seen6) != hosts || cfg.Network.IsValid() != (len(seen4) == hosts) {
				t.Errorf("%d IPv4 and %d IPv6 subnets for %d hosts", len(seen4), len(seen6), hosts)
			}
			if n := len(subnetsKeys(t, c)); n != hosts {
				t.Errorf("etcd holds %d leases, want %d", n, hosts)
			}
			if n := etcdLeaseCount(t, c); n != hosts {
				t.Errorf("%d etcd leases exist for %d hosts", n, hosts)
			}
		})
	}
}

// TestAcquireLeaseIPv6RaceWithAnotherIPv4Part: another host takes our IPv6
// subnet under a key with another IPv4 part between our list and our
// write, which no transaction can see. Once written, ours is the younger:
// it moves to a free IPv6 subnet, keeping its IPv4 one.
func TestAcquireLeaseIPv6RaceWithAnotherIPv4Part(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	cfg := mustParseConfig(t, `{"EnableIPv6":true,"Network":"10.5.0.0/16","IPv6Network":"fd00:10::/62","Backend":{"Type":"vxlan"}}`)
	first := mkLease6("10.5.50.0/24", "fd00:10:0:1::/64", 50, 0)
	putLease(t, c, first)
	claim := testClaim6(1)
	claim.Previous, claim.PreviousIPv6 = netip.MustParsePrefix("10.5.1.0/24"), netip.MustParsePrefix("fd00:10:0:2::/64")
	theirs := mkLease6("10.5.99.0/24", "fd00:10:0:2::/64", 99, 0)
	hl := &hookLease{Lease: c.Lease}
	var once sync.Once
	hl.afterGrant = func() { once.Do(func() { putLease(t, c, theirs) }) }
	o, err := AcquireLease(testCtx(t), withLease(c, hl), testPrefix, cfg, claim, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	l := expectOwn(t, c, cfg, o, claim)
	if l.Subnet != claim.Previous || l.IPv6Subnet != netip.MustParsePrefix("fd00:10:0:3::/64") {
		t.Errorf("got %s, want %s kept and the last free IPv6 subnet", fmtLease(&l), claim.Previous)
	}
	if got := readLease(t, c, theirs.Key); !got.SameTarget(theirs) {
		t.Errorf("the other host's lease is now %s", fmtLease(&got))
	}
	if keys := subnetsKeys(t, c); len(keys) != 3 {
		t.Errorf("keys %q, want the two others' and ours", keys)
	}
	if n := etcdLeaseCount(t, c); n != 1 {
		t.Errorf("%d etcd leases, want ours alone", n)
	}
}

// TestAcquireLeaseIPv6Exhausted: a small IPv6 range fills up, and the
// error says which; a host that holds a subnet still gets it back.
func TestAcquireLeaseIPv6Exhausted(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	cfg := mustParseConfig(t, `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10::/124","Backend":{"Type":"vxlan"}}`)
	got := map[netip.Prefix]bool{}
	for i := range 3 {
		claim := testClaim6(byte(i + 1))
		got[expectOwn(t, c, cfg, acquire(t, c, cfg, claim), claim).IPv6Subnet] = true
	}
	for _, s := range []string{"fd00:10::4/126", "fd00:10::8/126", "fd00:10::c/126"} {
		if !got[netip.MustParsePrefix(s)] {
			t.Errorf("%s not handed out; got %v", s, got)
		}
	}
	_, err := AcquireLease(testCtx(t), c, testPrefix, cfg, testClaim6(99), zap.NewNop())
	if !errors.Is(err, ErrNoFreeSubnet) {
		t.Fatalf("AcquireLease in a full IPv6 network: %v, want ErrNoFreeSubnet", err)
	}
	for _, want := range []string{"IPv6 network fd00:10::/124", "/126", "all 3", "fd00:10::4", "fd00:10::c"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	claim := testClaim6(2)
	expectOwn(t, c, cfg, acquire(t, c, cfg, claim), claim)

	// Dual-stack with room for IPv4 and none for IPv6: no lease either.
	dual := mustParseConfig(t, `{"EnableIPv6":true,"Network":"10.5.0.0/16","IPv6Network":"fd00:10::/124","Backend":{"Type":"vxlan"}}`)
	if _, err := AcquireLease(testCtx(t), c, testPrefix, dual, testClaim6(98), zap.NewNop()); !errors.Is(err, ErrNoFreeSubnet) {
		t.Errorf("dual-stack without a free IPv6 subnet: %v", err)
	}
	if n := etcdLeaseCount(t, c); n != 3 {
		t.Errorf("%d etcd leases, want the 3 hosts'", n)
	}
}

// TestAcquireLeaseIPv6LargeRange: a range too large to enumerate (fd00::/8
// of /126s) is drawn from at random.
func TestAcquireLeaseIPv6LargeRange(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	cfg := mustParseConfig(t, `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/8","IPv6SubnetLen":126,"Backend":{"Type":"vxlan"}}`)
	seen := map[netip.Prefix]bool{}
	for i := range 5 {
		claim := testClaim6(byte(i + 1))
		l := expectOwn(t, c, cfg, acquire(t, c, cfg, claim), claim)
		if seen[l.IPv6Subnet] {
			t.Errorf("%s handed out twice", l.IPv6Subnet)
		}
		seen[l.IPv6Subnet] = true
	}
}

// TestAcquireLeaseBadKeyWithOurIPv4Part: a key no lease table reads, but
// whose IPv4 part is the subnet we would take, keeps every new key with
// that part from being created: the subnet is passed over, not fought for
// forever.
func TestAcquireLeaseBadKeyWithOurIPv4Part(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	for _, cfg := range []Config{testConfig(), mustParseConfig(t, dualJSON)} {
		mustPut(t, c, testSubnetsPrefix+"10.5.48.0-24&garbage", "{}")
		claim := testClaim6(1)
		claim.Previous = netip.MustParsePrefix("10.5.48.0/24")
		l := expectOwn(t, c, cfg, acquire(t, c, cfg, claim), claim)
		if l.Subnet == claim.Previous {
			t.Errorf("got %s beside the bad key", fmtLease(&l))
		}
		mustDelete(t, c, l.Key)
	}
}

func TestAcquireLeaseClaimErrors(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	dual := mustParseConfig(t, dualJSON)
	for _, tt := range []struct {
		name  string
		cfg   Config
		claim func(*Claim)
		says  string
	}{
		{"IPv4 without PublicIP", testConfig(), func(c *Claim) { c.PublicIP = netip.Addr{} }, "PublicIP is not set"},
		{"IPv4 without VtepMAC", testConfig(), func(c *Claim) { c.VtepMAC = MAC{} }, "VtepMAC 00:00:00:00:00:00 is not a unicast MAC"},
		{"PublicIP IPv6", testConfig(), func(c *Claim) { c.PublicIP = netip.MustParseAddr("2001:db8::1") }, "PublicIP 2001:db8::1 is not an IPv4 address"},
		{"IPv6 without VtepMACv6", dual, func(c *Claim) { c.VtepMACv6 = MAC{} }, "VtepMACv6"},
		{"IPv6 without any address", mustParseConfig(t, v6JSON), func(c *Claim) { c.PublicIP, c.PublicIPv6 = netip.Addr{}, netip.Addr{} }, "neither PublicIPv6 nor PublicIP"},
		{"PublicIPv6 IPv4", dual, func(c *Claim) { c.PublicIPv6 = netip.MustParseAddr("198.51.100.1") }, "PublicIPv6 198.51.100.1 is not an IPv6 address"},
	} {
		claim := testClaim6(1)
		tt.claim(&claim)
		if _, err := AcquireLease(testCtx(t), c, testPrefix, tt.cfg, claim, zap.NewNop()); err == nil || !strings.Contains(err.Error(), tt.says) {
			t.Errorf("%s: %v, want an error saying %q", tt.name, err, tt.says)
		}
	}
	if keys := subnetsKeys(t, c); len(keys) != 0 {
		t.Errorf("refused claims wrote %q", keys)
	}
}

// TestHoldRecreatesDeletedDualStackKey: Hold takes the same subnets of
// both families again under the same key.
func TestHoldRecreatesDeletedDualStackKey(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	cfg := mustParseConfig(t, dualJSON)
	claim := testClaim6(1)
	o := acquire(t, c, cfg, claim)
	l := o.Lease()
	done, _ := runHold(t, o, time.Second)
	mustDelete(t, c, l.Key)
	o.Recheck()
	eventually(t, 10*time.Second, func() bool { return o.Lease().ModRevision != l.ModRevision }, "not re-created")
	now := expectOwn(t, c, cfg, o, claim)
	if now.Key != l.Key || now.Subnet != l.Subnet || now.IPv6Subnet != l.IPv6Subnet {
		t.Errorf("re-created as %s, want %s", fmtLease(&now), fmtLease(&l))
	}
	expectHolding(t, done)
	if err, _ := o.Conflict(); err != nil {
		t.Errorf("Conflict() = %v", err)
	}
}
