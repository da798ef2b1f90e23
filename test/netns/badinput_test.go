package netns_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vtepd/vtepd/test/netns"
)

// TestBadInput: etcd values written by anyone get a clear error naming the
// key, are skipped, counted, and never installed, and vtepd never stops for
// them.
func TestBadInput(t *testing.T) {
	t.Parallel()
	lab := newLab(t, "vtbad")
	if _, err := lab.StartEtcd(); err != nil {
		t.Fatal(err)
	}
	c := etcdClient(t, lab)
	o := &overlay{lab: lab}

	t.Run("invalid network config is waited out", func(t *testing.T) {
		put(t, c, prefix+"/config", `{"Network":"10.5.0.0/16","SubnetLen":33,"Backend":{"Type":"vxlan"}}`)
		h1, err := lab.AddHost()
		if err != nil {
			t.Fatal(err)
		}
		p, err := h1.StartVtepdNoWait("--report-interval", "1s")
		if err != nil {
			t.Fatal(err)
		}
		err = netns.Poll(10*time.Second, func() error {
			for _, e := range p.Entries("network config is invalid; waiting for it to be fixed") {
				if msg := e.Str("error"); strings.Contains(msg, prefix+"/config") && strings.Contains(msg, `"SubnetLen"`) {
					return nil
				}
			}
			return fmt.Errorf("no error naming the key and SubnetLen:\n%s", p.Tail(5))
		})
		if err != nil {
			t.Fatal(err)
		}
		if done, err := p.Exited(); done {
			t.Fatalf("vtepd exited on an invalid config (%v); it must wait for a fix", err)
		}
		// A stop while waiting is a clean stop, not an error.
		hx, err := lab.AddHost()
		if err != nil {
			t.Fatal(err)
		}
		px, err := hx.StartVtepdNoWait()
		if err != nil {
			t.Fatal(err)
		}
		if err := netns.Poll(10*time.Second, func() error {
			if len(px.Entries("network config is invalid; waiting for it to be fixed")) == 0 {
				return errStillThere
			}
			return nil
		}); err != nil {
			t.Fatal("the second vtepd never started waiting")
		}
		if err := px.Stop(5 * time.Second); err != nil {
			t.Errorf("SIGTERM while waiting for a valid config: %v, want exit status 0\n%s", err, px.Tail(3))
		}
		put(t, c, prefix+"/config", overlayConfig)
		if err := h1.WaitReady(p, 20*time.Second); err != nil {
			t.Fatal(err)
		}
		if _, err := h1.AddContainer(4); err != nil {
			t.Fatal(err)
		}
		o.hosts = append(o.hosts, h1)
		o.addHost(t, 4)
	})
	if t.Failed() {
		return
	}
	h1, h2 := o.hosts[0], o.hosts[1]
	own, peer := mustSubnet(t, h1), mustSubnet(t, h2)
	f := newFakes(t, c, 8)
	lease := func(publicIP, mac string) string {
		return fmt.Sprintf(`{"PublicIP":%q,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":%q}}`, publicIP, mac)
	}
	good := "02:00:00:00:0b:0b"
	bad := []struct {
		name, key, value string
		subnet           netip.Prefix // where a miss would have gone; zero if none
		says             string       // what the warning must say
	}{
		{"not JSON", f[0].Key(), `{"PublicIP":`, f[0].Subnet, "not flannel's lease JSON"},
		{"another backend", f[1].Key(), `{"PublicIP":"198.51.100.201","BackendType":"udp"}`, f[1].Subnet, `BackendType "udp"`},
		{"zero MAC", f[2].Key(), lease("198.51.100.202", "00:00:00:00:00:00"), f[2].Subnet, "not a unicast MAC"},
		{"multicast MAC", f[3].Key(), lease("198.51.100.203", "01:00:5e:00:00:01"), f[3].Subnet, "not a unicast MAC"},
		{"broadcast MAC", f[4].Key(), lease("198.51.100.204", "ff:ff:ff:ff:ff:ff"), f[4].Subnet, "not a unicast MAC"},
		{"multicast public IP", f[5].Key(), lease("224.0.0.5", good), f[5].Subnet, "not a unicast address"},
		{"unspecified public IP", f[6].Key(), lease("0.0.0.0", good), f[6].Subnet, "not a unicast address"},
		{"key that does not parse", prefix + "/subnets/not-a-subnet", lease("198.51.100.207", good), netip.Prefix{}, `subnet key "not-a-subnet"`},
		{"outside the network", prefix + "/subnets/10.6.1.0-24", lease("198.51.100.208", good), netip.Prefix{}, "outside the overlay network"},
		{"overlapping another lease", prefix + "/subnets/" + subnetKey(peer, 25, 128), lease("198.51.100.209", "02:00:00:00:0b:09"), netip.Prefix{}, "overlaps " + peer.String()},
		// A dual-stack flanneld's key and value, claiming our IPv4 subnet
		// (the overlay is IPv4-only: its IPv6 part is not vtepd's here).
		{"claiming our own subnet", prefix + "/subnets/" + subnetKey(own, 24, 0) + "&fd00:10::-64",
			`{"PublicIP":"198.51.100.210","PublicIPv6":"2001:db8::210","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:0b:10"},"BackendV6Data":{"VNI":1,"VtepMAC":"02:00:00:00:0b:11"}}`,
			netip.Prefix{}, "claims this host's own subnet"},
		// An IPv6 part in the key and none in the value: which VTEP the
		// IPv6 subnet is behind is anybody's guess.
		{"a v6 key with a v4 value", f[7].Key() + "&fd00:10:0:77::-64", lease("198.51.100.211", "02:00:00:00:0b:12"), netip.Prefix{}, "BackendV6Data"},
	}
	for _, b := range bad {
		put(t, c, b.key, b.value)
	}

	t.Run("each is warned about once, naming the key", func(t *testing.T) {
		for _, b := range bad {
			err := netns.Poll(10*time.Second, func() error {
				n := warnings(h1, b.key, b.says)
				if n == 1 {
					return nil
				}
				return fmt.Errorf("%s: %d warnings naming %s and saying %q, want 1", b.name, n, b.key, b.says)
			})
			if err != nil {
				t.Error(err)
			}
		}
		// The same bad value written again is a new revision: one more.
		put(t, c, bad[0].key, bad[0].value)
		if err := netns.Poll(10*time.Second, func() error {
			if n := warnings(h1, bad[0].key, bad[0].says); n != 2 {
				return fmt.Errorf("%d warnings after a second write, want 2", n)
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
	})

	t.Run("each is counted", func(t *testing.T) {
		// 11 invalid values (one written twice) and 2 conflicts, on h1.
		err := netns.Poll(10*time.Second, func() error {
			invalid, conflicts := summed(h1, "invalid_leases"), summed(h1, "lease_conflicts")
			if invalid != 11 || conflicts != 2 {
				return fmt.Errorf("counted %d invalid leases and %d conflicts, want 11 and 2", invalid, conflicts)
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
	})

	t.Run("none is installed", func(t *testing.T) {
		for _, b := range bad {
			if b.subnet.IsValid() {
				touch(t, h1, b.subnet.Addr().Next().Next())
			}
		}
		k, err := h1.Kernel(device)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range k.Neighbours {
			for _, b := range bad {
				if b.subnet.IsValid() && b.subnet.Contains(n.IP) && len(n.MAC) == 6 {
					t.Errorf("%s: neighbour %s -> %s installed", b.name, n.IP, n.MAC)
				}
			}
		}
		peerLease := leaseOf(t, o, peer)
		for _, fd := range k.FDB {
			if fd.MAC.String() != peerLease.VtepMAC.String() {
				t.Errorf("fdb %s dst %s installed, want only %s's", fd.MAC, fd.Dst, h2.Name)
			}
		}
		if n := countLog(h1, "miss", "outcome", "no_lease"); n < 7 {
			t.Errorf("%d misses logged as no_lease, want one for each bad subnet touched", n)
		}
		// The peer whose subnet the overlapping lease claimed is still
		// reached through its own lease.
		firstPing(t, h1, h2.Container.Extra[0])
		if done, err := h1.Vtepd.Exited(); done {
			t.Errorf("vtepd stopped: %v", err)
		}
	})
}

// subnetKey returns the key of a prefix of length bits at offset within
// subnet's first 256 addresses.
func subnetKey(subnet netip.Prefix, bits, offset int) string {
	a := subnet.Addr().As4()
	a[3] += byte(offset)
	return fmt.Sprintf("%s-%d", netip.AddrFrom4(a), bits)
}

// warnings counts h's warnings about lease key whose error says says.
func warnings(h *netns.Host, key, says string) int {
	n := 0
	for _, msg := range []string{"skipping invalid lease", "lease conflicts with another; not installing it until the conflict is gone"} {
		for _, e := range h.Vtepd.Entries(msg) {
			if e.Str("key") == key && strings.Contains(e.Str("error"), says) {
				n++
			}
		}
	}
	return n
}

// summed adds up a field of h's periodic summaries.
func summed(h *netns.Host, field string) int {
	total := 0
	for _, e := range h.Vtepd.Entries("unanswered misses and losses in the last interval") {
		if v, ok := e[field].(float64); ok {
			total += int(v)
		} else if n, ok := e[field].(json.Number); ok {
			i, _ := n.Int64()
			total += int(i)
		}
	}
	return total
}
