package netns_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
	"github.com/vtepd/vtepd/fabric"
	"github.com/vtepd/vtepd/store"
	lab "github.com/vtepd/vtepd/test/netns"
)

// BenchmarkKernelWrites measures vtepd's neighbour and FDB writes on a real
// VXLAN device in a lab namespace, through the same fabric.Entries the miss
// path uses: the cost of one answer's writes, without a queued packet to
// deliver.
func BenchmarkKernelWrites(b *testing.B) {
	if buildErr != nil {
		b.Fatal(buildErr)
	}
	l, err := lab.New(lab.Options{Name: "vtbw", Dir: b.TempDir(), Bin: bins})
	if err != nil {
		b.Skip(err)
	}
	defer l.Close()
	h, err := l.AddHost()
	if err != nil {
		b.Fatal(err)
	}
	if _, err := h.Exec("ip", "link", "add", device, "type", "vxlan", "id", "1", "dstport", "8472", "local", h.IP.String(), "dev", "eth0", "nolearning", "proxy", "l2miss", "l3miss"); err != nil {
		b.Fatal(err)
	}
	if _, err := h.Exec("ip", "link", "set", device, "up"); err != nil {
		b.Fatal(err)
	}
	k, err := h.Kernel(device)
	if err != nil {
		b.Fatal(err)
	}
	ns, err := netns.GetFromName(h.NS)
	if err != nil {
		b.Fatal(err)
	}
	defer ns.Close()
	e, err := fabric.OpenEntriesAt(ns, k.Device.Attrs().Index, device)
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	mac := [6]byte{0x02, 0, 0, 0, 0, 1}
	dst := netip.MustParseAddr("198.51.100.99")
	ips := make([]netip.Addr, 256)
	for i := range ips {
		ips[i] = netip.AddrFrom4([4]byte{10, 5, 9, byte(i)})
	}
	b.Run("set_neigh", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if err := e.SetNeigh(ips[i%len(ips)], mac); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("set_fdb", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := e.SetFDB(mac, dst); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestKernelWriteErrors: the miss path's writer reports the kernel's
// refusal, per write, alone and in a batch.
func TestKernelWriteErrors(t *testing.T) {
	l := newLab(t, "vtwerr")
	h, err := l.AddHost()
	if err != nil {
		t.Fatal(err)
	}
	ns, err := netns.GetFromName(h.NS)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	// No device has index 999 in a fresh namespace.
	e, err := fabric.OpenEntriesAt(ns, 999, "missing0")
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	mac := store.MAC{0x02, 0, 0, 0, 0, 1}
	if err := e.SetNeigh(netip.MustParseAddr("10.5.9.1"), mac); err == nil || !strings.Contains(err.Error(), "set neighbour 10.5.9.1") {
		t.Errorf("SetNeigh on a missing device: %v", err)
	}
	if err := e.SetFDB(mac, netip.MustParseAddr("198.51.100.9")); err == nil {
		t.Errorf("SetFDB on a missing device succeeded")
	}
	writes := make([]fabric.NeighWrite, 300) // three batches
	for i := range writes {
		writes[i] = fabric.NeighWrite{IP: netip.AddrFrom4([4]byte{10, 5, byte(i >> 8), byte(i)}), MAC: mac}
	}
	err = e.SetNeighs(writes)
	j, ok := err.(interface{ Unwrap() []error })
	if !ok || len(j.Unwrap()) != len(writes) {
		t.Errorf("SetNeighs of %d on a missing device: %v errors", len(writes), err)
	}
	if st := e.Stats(fabric.OpSetNeigh); st.Writes != 301 || st.Errors != 301 {
		t.Errorf("stats %+v, want 301 writes, all failed", st)
	}
}
