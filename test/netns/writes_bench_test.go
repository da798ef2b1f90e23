package netns_test

import (
	"net/netip"
	"os"
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
	if os.Geteuid() != 0 {
		b.Skip("skipping: the netns lab needs root (network namespaces)")
	}
	l, err := lab.New(lab.Options{Name: "vtbw", Dir: b.TempDir(), Bin: bins})
	if err != nil {
		b.Skip(err)
	}
	defer l.Close()
	e := vxlanEntries(b, l)
	mac := [6]byte{0x02, 0, 0, 0, 0, 1}
	dst := netip.MustParseAddr("198.51.100.99")
	ips := make([]netip.Addr, 256)
	for i := range ips {
		ips[i] = netip.AddrFrom4([4]byte{10, 5, 9, byte(i)})
	}
	b.Run("set_neigh", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if err := e.SetNeigh(ips[i%len(ips)], mac, true); err != nil {
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

// vxlanEntries makes a host in l with a VXLAN device as vtepd makes it, and
// opens the miss path's writer on it.
func vxlanEntries(tb testing.TB, l *lab.Lab) *fabric.Entries {
	tb.Helper()
	h, err := l.AddHost()
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := h.Exec("ip", "link", "add", device, "type", "vxlan", "id", "1", "dstport", "8472", "local", h.IP.String(), "dev", "eth0", "nolearning", "proxy", "l2miss", "l3miss"); err != nil {
		tb.Fatal(err)
	}
	if _, err := h.Exec("ip", "link", "set", device, "up"); err != nil {
		tb.Fatal(err)
	}
	k, err := h.Kernel(device)
	if err != nil {
		tb.Fatal(err)
	}
	ns, err := netns.GetFromName(h.NS)
	if err != nil {
		tb.Fatal(err)
	}
	defer ns.Close()
	e, err := fabric.OpenEntriesAt(ns, k.Device.Attrs().Index, device)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { e.Close() })
	return e
}

// TestKernelWritesAllocateNothing: the miss path's two writes allocate
// nothing when the kernel accepts them (a count, not a timing).
func TestKernelWritesAllocateNothing(t *testing.T) {
	e := vxlanEntries(t, newLab(t, "vtwalloc"))
	mac := [6]byte{0x02, 0, 0, 0, 0, 1}
	ip, dst := netip.MustParseAddr("10.5.9.1"), netip.MustParseAddr("198.51.100.99")
	allocs := testing.AllocsPerRun(100, func() {
		if err := e.SetNeigh(ip, mac, true); err != nil {
			t.Fatal(err)
		}
		if err := e.SetFDB(mac, dst); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("a neighbour and an FDB write allocate %v times, want 0", allocs)
	}
}

// TestKernelWriteErrors: the miss path's writer reports the kernel's
// refusal, per write, alone and in a batch.
func TestKernelWriteErrors(t *testing.T) {
	t.Parallel()
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
	if err := e.SetNeigh(netip.MustParseAddr("10.5.9.1"), mac, true); err == nil || !strings.Contains(err.Error(), "set neighbour 10.5.9.1") {
		t.Errorf("SetNeigh on a missing device: %v", err)
	}
	if err := e.SetFDB(mac, netip.MustParseAddr("198.51.100.9")); err == nil {
		t.Errorf("SetFDB on a missing device succeeded")
	}
	writes := make([]fabric.NeighWrite, 300) // three batches
	for i := range writes {
		writes[i] = fabric.NeighWrite{IP: netip.AddrFrom4([4]byte{10, 5, byte(i >> 8), byte(i)}), MAC: mac}
	}
	took, err := e.SetNeighs(writes)
	j, ok := err.(interface{ Unwrap() []error })
	if took != 0 || !ok || len(j.Unwrap()) != len(writes) {
		t.Errorf("SetNeighs of %d on a missing device: %d taken, %v errors", len(writes), took, err)
	}
	if st := e.Stats(fabric.OpSetNeigh); st.Writes != 301 || st.Errors != 301 {
		t.Errorf("stats %+v, want 301 writes, all failed", st)
	}
}
