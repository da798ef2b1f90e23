package netns_test

import (
	"errors"
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
// deliver. The rows ending in 6 write on the IPv6 device (flannel-v6.1, over
// an IPv6 underlay: AF_INET6 neighbours, FDB entries towards IPv6); the
// set_fdb_and_neigh rows are one answer's two writes in one datagram.
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
	e, e6 := vxlanEntries(b, l)
	mac := [6]byte{0x02, 0, 0, 0, 0, 1}
	for _, fam := range []struct {
		suffix string
		e      *fabric.Entries
		dst    netip.Addr
		ip     func(i int) netip.Addr
	}{
		{"", e, netip.MustParseAddr("198.51.100.99"), func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 5, 9, byte(i)}) }},
		{"6", e6, netip.MustParseAddr("2001:db8:5::99"), func(i int) netip.Addr {
			return netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, 0, 9, 15: byte(i)})
		}},
	} {
		ips := make([]netip.Addr, 256)
		for i := range ips {
			ips[i] = fam.ip(i)
		}
		b.Run("set_neigh"+fam.suffix, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if err := fam.e.SetNeigh(ips[i%len(ips)], mac, true); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("set_fdb"+fam.suffix, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := fam.e.SetFDB(mac, fam.dst); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("set_fdb_and_neigh"+fam.suffix, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if fdbErr, neighErr := fam.e.SetFDBAndNeigh(mac, fam.dst, ips[i%len(ips)], true); fdbErr != nil || neighErr != nil {
					b.Fatal(fdbErr, neighErr)
				}
			}
		})
	}
}

// vxlanEntries makes a host in l with the VXLAN devices vtepd makes, the
// IPv4 one (flannel.1) and the IPv6 one over an IPv6 underlay address
// (flannel-v6.1), and opens the miss path's writer on each.
func vxlanEntries(tb testing.TB, l *lab.Lab) (e4, e6 *fabric.Entries) {
	tb.Helper()
	h, err := l.AddHost()
	if err != nil {
		tb.Fatal(err)
	}
	local6 := underlayAddr6(h)
	for _, c := range [][]string{
		{"ip", "addr", "add", local6.String() + "/64", "dev", "eth0", "nodad"},
		{"ip", "link", "add", device, "type", "vxlan", "id", "1", "dstport", "8472", "local", h.IP.String(), "dev", "eth0", "nolearning", "proxy", "l2miss", "l3miss"},
		{"ip", "link", "set", device, "up"},
		{"ip", "link", "add", device6, "type", "vxlan", "id", "1", "dstport", "8472", "local", local6.String(), "dev", "eth0", "nolearning", "proxy", "l2miss", "l3miss"},
		{"ip", "link", "set", device6, "up"},
	} {
		if _, err := h.Exec(c...); err != nil {
			tb.Fatal(err)
		}
	}
	ns, err := netns.GetFromName(h.NS)
	if err != nil {
		tb.Fatal(err)
	}
	defer ns.Close()
	open := func(name string, opts ...fabric.EntriesOption) *fabric.Entries {
		k, err := h.Kernel(name)
		if err != nil {
			tb.Fatal(err)
		}
		e, err := fabric.OpenEntriesAt(ns, k.Device.Attrs().Index, name, opts...)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { e.Close() })
		return e
	}
	return open(device), open(device6, fabric.WithIPv6(true))
}

// device6 is the IPv6 device's name, as flannel names it for VNI 1.
const device6 = "flannel-v6.1"

// TestKernelWritesAllocateNothing: the miss path's writes allocate nothing
// when the kernel accepts them (a count, not a timing), on the IPv4 device
// and on the IPv6 one: one by one, as a pair in one datagram, and batched.
func TestKernelWritesAllocateNothing(t *testing.T) {
	e4, e6 := vxlanEntries(t, newLab(t, "vtwalloc"))
	mac := [6]byte{0x02, 0, 0, 0, 0, 1}
	for _, fam := range []struct {
		name    string
		e       *fabric.Entries
		ip, dst netip.Addr
	}{
		{"IPv4", e4, netip.MustParseAddr("10.5.9.1"), netip.MustParseAddr("198.51.100.99")},
		{"IPv6", e6, netip.MustParseAddr("fd00:10:9::1"), netip.MustParseAddr("2001:db8:5::99")},
	} {
		batch := make([]fabric.NeighWrite, 16)
		for i := range batch {
			batch[i] = fabric.NeighWrite{IP: fam.ip, MAC: mac, Permanent: i%2 == 0}
		}
		for _, w := range []struct {
			name string
			fn   func() error
		}{
			{"a neighbour and an FDB write", func() error {
				return errors.Join(fam.e.SetNeigh(fam.ip, mac, true), fam.e.SetFDB(mac, fam.dst))
			}},
			{"the pair in one datagram", func() error {
				return errors.Join(fam.e.SetFDBAndNeigh(mac, fam.dst, fam.ip, false))
			}},
			{"a batch of 16 neighbours", func() error {
				_, err := fam.e.SetNeighs(batch)
				return err
			}},
		} {
			allocs := testing.AllocsPerRun(100, func() {
				if err := w.fn(); err != nil {
					t.Fatal(err)
				}
			})
			if allocs != 0 {
				t.Errorf("%s: %s allocate %v times, want 0", fam.name, w.name, allocs)
			}
		}
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
