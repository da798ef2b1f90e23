package netns_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/vtepd/vtepd/test/netns"
)

// TestFlannelInterop: vtepd hosts and hosts set up as flanneld's vxlan
// backend sets them up share one overlay under flannel's default prefix,
// in both directions, first packet included: a flannel host there before
// the vtepd hosts, and one that joins after them. vtepd answers misses for
// the flannel hosts' leases (flannel's JSON, "PublicIPv6":null and all);
// the flannel hosts route to vtepd's leases with the static entries
// flanneld would write from them, read as flanneld reads them.
func TestFlannelInterop(t *testing.T) {
	t.Parallel()
	claimNeighbours(t, 56) // four hosts of containers pinging each other hold some 50 neighbour entries
	lab := newLab(t, "vtflan")
	if _, err := lab.StartEtcd(); err != nil {
		t.Fatal(err)
	}
	network := netip.MustParsePrefix(overlayPrefix)
	if err := lab.PutNetworkConfig(ctxFor(t, 10*time.Second), overlayConfig); err != nil {
		t.Fatal(err)
	}
	f1, err := lab.AddFlannelHost(ctxFor(t, 10*time.Second), network, netip.MustParsePrefix("10.5.200.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	o := &overlay{lab: lab}
	v1, v2 := o.addHost(t, 4), o.addHost(t, 4)
	f2, err := lab.AddFlannelHost(ctxFor(t, 10*time.Second), network, netip.MustParsePrefix("10.5.201.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	// What flanneld does on the lease events it has seen by now.
	for _, f := range []*netns.FlannelHost{f1, f2} {
		n, err := f.Sync(ctxFor(t, 10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if n != 3 {
			t.Fatalf("%s wrote entries for %d leases, want 3 (two vtepd hosts, the other flannel host)", f.Name, n)
		}
		if _, err := f.AddContainer(4); err != nil {
			t.Fatal(err)
		}
	}

	// Every ordered pair of kinds, to a fresh address each time: the
	// vtepd side answers its misses, the flannel side has its entries.
	pairs := []struct {
		from, to *netns.Host
		extra    int
	}{
		{v1, f1.Host, 0}, {f1.Host, v1, 0},
		{v2, f2.Host, 0}, {f2.Host, v2, 0},
		{v1, f2.Host, 1}, {f2.Host, v1, 1},
		{f1.Host, f2.Host, 1}, {v1, v2, 2},
	}
	for _, p := range pairs {
		firstPing(t, p.from, p.to.Container.Extra[p.extra])
	}
	for _, f := range []*netns.FlannelHost{f1, f2} {
		k, err := f.Kernel(device)
		if err != nil {
			t.Fatal(err)
		}
		if len(k.Neighbours) != 3 || len(k.FDB) != 3 {
			t.Errorf("%s holds %d neighbour and %d FDB entries, want flanneld's 3 and 3: it asked for nothing", f.Name, len(k.Neighbours), len(k.FDB))
		}
	}
	// vtepd's side: entries for flannel's leases came from misses.
	answered := 0
	for _, e := range v1.Vtepd.Entries("miss") {
		if e.Str("ip") == f1.Container.Extra[0].String() && e.Str("outcome") == "answered" && e.Str("vtep") == f1.IP.String() {
			answered++
		}
	}
	if answered != 1 {
		t.Errorf("v1 answered %d misses for f1's container address with f1 as VTEP, want 1", answered)
	}

	// Migrating f2 from flanneld to vtepd: same subnet, and the device is
	// recreated (flanneld's has no miss flags) with the MAC its lease
	// publishes, so the entries other hosts hold for it stay right.
	before := leaseOf(t, o, f2.Subnet)
	if _, err := f2.StartVtepd(); err != nil {
		t.Fatal(err)
	}
	if n := len(f2.Vtepd.Entries("existing device is incompatible; recreating it")); n != 1 {
		t.Errorf("vtepd on the flannel host logged %d device recreations, want 1", n)
	}
	after := leaseOf(t, o, f2.Subnet)
	if after.Subnet != before.Subnet || after.VtepMAC != before.VtepMAC || after.PublicIP != before.PublicIP {
		t.Errorf("migration changed the lease: %v -> %v", before, after)
	}
	for _, p := range []struct {
		from, to *netns.Host
		extra    int
	}{
		{f1.Host, f2.Host, 2}, // flannel's static entries for f2, untouched
		{v1, f2.Host, 1},      // v1's answered entries for f2, kept
		{f2.Host, v2, 3},      // f2 now asks vtepd
		{f2.Host, f1.Host, 3},
	} {
		firstPing(t, p.from, p.to.Container.Extra[p.extra])
	}
}
