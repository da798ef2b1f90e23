package netns_test

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/vtepd/vtepd/store"
)

// TestLeasesCommandTellsTheTruth: `vtepd leases` marks each key as the
// agent's table judges it: valid, invalid (skipped) or conflict (refused
// for a clash with an older lease), with the reason, and agrees with the
// running agent's table on which leases it refuses.
func TestLeasesCommandTellsTheTruth(t *testing.T) {
	t.Parallel()
	o := newOverlay(t, "vtleases", 1, 0)
	h1 := o.hosts[0]
	c := etcdClient(t, o.lab)
	own := leaseOf(t, o, mustSubnet(t, h1))
	base := store.Lease{PublicIP: netip.MustParseAddr("198.51.100.201"), VtepMAC: store.MAC{0x02, 0xaa, 0, 0, 0, 1}, VNI: 1}
	bad := map[string]struct {
		lease       store.Lease
		status, why string
	}{
		"over the host's own subnet": {with(base, "10.5.0.0/16", 1, 1), "conflict", "overlaps " + own.Subnet.String()},
		"inside another lease":       {with(base, netip.PrefixFrom(own.Subnet.Addr(), 25).String(), 2, 1), "conflict", "overlaps " + own.Subnet.String()},
		"duplicate VTEP MAC":         {store.Lease{Subnet: netip.MustParsePrefix("10.5.251.0/24"), PublicIP: base.PublicIP, VtepMAC: own.VtepMAC, VNI: 1}, "conflict", "VtepMAC " + own.VtepMAC.String()},
		"another VNI":                {with(base, "10.5.252.0/24", 4, 7), "invalid", "VNI 7"},
	}
	for _, b := range bad {
		put(t, c, leaseKey(b.lease.Subnet), string(b.lease.Value()))
	}
	out, err := h1.Exec(o.lab.Bin.Vtepd, "leases", "--json", "--etcd-endpoints", strings.Join(o.lab.Endpoints(), ","))
	if err != nil {
		t.Fatalf("vtepd leases: %v", err)
	}
	var rows []struct{ Key, Status, Reason string }
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("vtepd leases --json: %v\n%s", err, out)
	}
	byKey := map[string]struct{ Status, Reason string }{}
	for _, r := range rows {
		byKey[r.Key] = struct{ Status, Reason string }{r.Status, r.Reason}
	}
	if r := byKey[leaseKey(own.Subnet)]; r.Status != "valid" {
		t.Errorf("the host's own lease: %+v", r)
	}
	for name, b := range bad {
		r := byKey[leaseKey(b.lease.Subnet)]
		if r.Status != b.status || !strings.Contains(r.Reason, b.why) {
			t.Errorf("%s: %s %q, want %s with %q", name, r.Status, r.Reason, b.status, b.why)
		}
	}
	// The agent's own table refuses the same ones.
	_, body, err := h1.HTTPGet("/debug/leases")
	if err != nil {
		t.Fatal(err)
	}
	var table struct {
		Leases, Rejected []struct{ Key string }
	}
	if err := json.Unmarshal([]byte(body), &table); err != nil {
		t.Fatal(err)
	}
	for _, l := range table.Leases {
		if r := byKey[l.Key]; r.Status != "valid" {
			t.Errorf("the agent admits %s, vtepd leases says %s", l.Key, r.Status)
		}
	}
	for _, l := range table.Rejected {
		if r := byKey[l.Key]; r.Status != "conflict" {
			t.Errorf("the agent refuses %s, vtepd leases says %s", l.Key, r.Status)
		}
	}
}

// with returns l for subnet, with the MAC's last byte and the VNI given.
func with(l store.Lease, subnet string, macLast byte, vni int) store.Lease {
	l.Subnet = netip.MustParsePrefix(subnet)
	l.VtepMAC[5] = macLast
	l.VNI = vni
	return l
}
