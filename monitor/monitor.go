// Package monitor is `vtepd monitor`: a live view of the kernel's VXLAN
// misses on a host, whether vtepd runs there or not (next to flanneld too).
// It only listens: it subscribes to the same netlink group as the responder
// and reads the kernel's entries through fabric's read-only Reader; it
// never writes.
//
// For each miss it prints the time, device, kind, address or MAC and state.
// Given the lease table, it adds the lease that would answer the miss and
// whether the kernel holds the right entry a moment later: the question an
// operator asks when a first packet vanished.
package monitor

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/vtepd/vtepd/fabric"
	"github.com/vtepd/vtepd/miss"
	"github.com/vtepd/vtepd/store"
)

// Options choose what is shown and how.
type Options struct {
	// Device shows only this device's misses ("": every VXLAN device).
	Device string
	// Kind shows only misses of this kind (0: both).
	Kind miss.Kind
	// Leases, if set, is used to say which lease would answer each miss,
	// and whether the kernel holds the right entry.
	Leases *store.Table
	// Networks are the overlay's networks (IPv4, IPv6 or both), for
	// "outside the overlay" (with Leases).
	Networks []netip.Prefix
	// Settle is how long after a miss the kernel's entries are read, to
	// show whether it was answered. 0 reads them at once.
	Settle time.Duration
	// JSON prints one JSON object per line instead of text.
	JSON bool
}

// Event is one miss as the monitor shows it.
type Event struct {
	Time   time.Time `json:"time"`
	Device string    `json:"device"`
	// Family is the address family the device carries: ipv4, or ipv6 for
	// a device whose misses are IPv6 addresses (flannel-v6.<VNI>).
	Family string `json:"family"`
	Kind   string `json:"kind"`
	IP     string `json:"ip,omitempty"`
	MAC    string `json:"mac,omitempty"`
	State  string `json:"state"`
	// Verdict is what a responder with the lease table would do: answer,
	// own_subnet, no_lease or outside_overlay (only with a table).
	Verdict string `json:"verdict,omitempty"`
	// Lease is the lease that would answer it.
	Lease *LeaseView `json:"lease,omitempty"`
	// Neigh and FDB are the kernel's entries for the miss, Settle after
	// it: "none", the entry, and with a lease whether it is right.
	Neigh string `json:"neigh,omitempty"`
	FDB   string `json:"fdb,omitempty"`
	// Right says whether the kernel holds what the lease says it should
	// (only with a table, and a lease).
	Right *bool `json:"right,omitempty"`

	ifindex int
}

// LeaseView is a lease as the monitor shows it.
type LeaseView struct {
	Subnet   string `json:"subnet"`
	PublicIP string `json:"public_ip"`
	VtepMAC  string `json:"vtep_mac"`
}

// Monitor prints misses. It owns its netlink sockets.
type Monitor struct {
	opts     Options
	w        io.Writer
	listener *miss.Listener
	kernel   *fabric.Reader
	devices  map[int]device // the listener's goroutine only
	snap     snapshot       // the printer's goroutine only
}

type device struct {
	name  string
	vxlan bool
	mac   store.MAC
}

// snapshot is the kernel's entries of one device at one time, shared by
// every event whose settle time has passed when it was taken.
type snapshot struct {
	ifindex int
	taken   time.Time
	neigh   map[netip.Addr]fabric.Neighbour
	fdb     map[store.MAC][]netip.Addr
}

// New subscribes to the kernel's neighbour notifications in the calling
// thread's namespace.
func New(w io.Writer, opts Options) (*Monitor, error) {
	l, err := miss.Listen(0)
	if err != nil {
		return nil, err
	}
	r, err := fabric.OpenReader()
	if err != nil {
		l.Close()
		return nil, err
	}
	return &Monitor{opts: opts, w: w, listener: l, kernel: r, devices: map[int]device{}}, nil
}

// Close releases the sockets.
func (m *Monitor) Close() error {
	m.kernel.Close()
	return m.listener.Close()
}

// Run prints misses until ctx is done, then returns nil.
func (m *Monitor) Run(ctx context.Context) error {
	queue := make(chan Event, 4096)
	printed := make(chan error, 1)
	go func() { printed <- m.print(ctx, queue) }()
	err := m.listener.Run(ctx, func(ms *miss.Miss) {
		ev, ok := m.event(ms)
		if !ok {
			return
		}
		select {
		case queue <- ev:
		default: // the printer is behind: better drop a line than the socket
		}
	}, nil)
	close(queue)
	perr := <-printed
	if ctx.Err() != nil {
		return perr
	}
	if err != nil {
		return err
	}
	return perr
}

// event turns a miss into an event, if it is to be shown.
func (m *Monitor) event(ms *miss.Miss) (Event, bool) {
	if m.opts.Kind != 0 && ms.Kind != m.opts.Kind {
		return Event{}, false
	}
	dev := m.device(ms.Ifindex)
	if !dev.vxlan || m.opts.Device != "" && dev.name != m.opts.Device {
		return Event{}, false
	}
	ev := Event{Time: ms.Received, Device: dev.name, Kind: ms.Kind.String(), State: miss.StateString(ms.State), ifindex: ms.Ifindex}
	// The device's family: an L3 miss's address says it; for an L2 miss,
	// the lease whose part has that VTEP MAC does, or else the device's
	// name (flannel's flannel-v6.<VNI>).
	ipv6 := ms.IP.Is6() && !ms.IP.Is4In6() || !ms.IP.IsValid() && strings.Contains(dev.name, "-v6.")
	if ms.IP.IsValid() {
		ev.IP = ms.IP.String()
	}
	if ms.HasMAC {
		ev.MAC = ms.MAC.String()
	}
	if m.opts.Leases == nil {
		ev.Family = familyName(ipv6)
		return ev, true
	}
	var l store.Lease
	var ok bool
	switch {
	case ms.Kind == miss.L3 && !slices.ContainsFunc(m.opts.Networks, func(n netip.Prefix) bool { return n.Contains(ms.IP) }):
		ev.Family, ev.Verdict = familyName(ipv6), "outside_overlay"
		return ev, true
	case ms.Kind == miss.L3:
		l, ok = m.opts.Leases.LookupIP(ms.IP)
	default:
		l, ok = m.opts.Leases.LookupMAC(ms.MAC)
		if ok {
			ipv6 = l.VtepMACv6 == ms.MAC
		}
	}
	ev.Family = familyName(ipv6)
	part, hasPart := l.IPv4()
	if ipv6 {
		part, hasPart = l.IPv6()
	}
	switch {
	case !ok || !hasPart:
		ev.Verdict = "no_lease"
	case part.VtepMAC == dev.mac:
		ev.Verdict = "own_subnet"
	default:
		ev.Verdict = "answer"
		ev.Lease = &LeaseView{Subnet: part.Subnet.String(), PublicIP: part.PublicIP.String(), VtepMAC: part.VtepMAC.String()}
	}
	return ev, true
}

func familyName(ipv6 bool) string {
	if ipv6 {
		return "ipv6"
	}
	return "ipv4"
}

// device describes an interface, from a cache refreshed on first sight.
func (m *Monitor) device(ifindex int) device {
	if d, ok := m.devices[ifindex]; ok {
		return d
	}
	var d device
	if link, err := m.kernel.Link(ifindex); err == nil {
		d.vxlan, d.name = link.VXLAN, link.Name
		if len(link.MAC) == 6 {
			d.mac = store.MAC(link.MAC)
		}
	} else {
		d.name = fmt.Sprintf("ifindex %d", ifindex)
	}
	if len(m.devices) > 1024 {
		clear(m.devices) // devices come and go; keep the cache small
	}
	m.devices[ifindex] = d
	return d
}

// print writes events in order, each once its settle time has passed.
func (m *Monitor) print(ctx context.Context, queue <-chan Event) error {
	enc := json.NewEncoder(m.w)
	for ev := range queue {
		if wait := time.Until(ev.Time.Add(m.opts.Settle)); wait > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
		}
		m.judge(&ev)
		var err error
		if m.opts.JSON {
			err = enc.Encode(ev)
		} else {
			_, err = fmt.Fprintln(m.w, ev.Text())
		}
		if err != nil {
			return fmt.Errorf("monitor: write: %w", err)
		}
	}
	return nil
}

// judge fills in the kernel's entries for ev, and whether they are right.
func (m *Monitor) judge(ev *Event) {
	settled := ev.Time.Add(m.opts.Settle)
	if m.snap.ifindex != ev.ifindex || m.snap.taken.Before(settled) {
		m.snap = m.take(ev.ifindex)
	}
	if m.snap.neigh == nil {
		return
	}
	var wantMAC store.MAC
	var wantDst netip.Addr
	if ev.Lease != nil {
		wantMAC, _ = store.ParseMAC(ev.Lease.VtepMAC)
		wantDst, _ = netip.ParseAddr(ev.Lease.PublicIP)
	}
	right := true
	mac := wantMAC
	if ev.IP != "" {
		ip, _ := netip.ParseAddr(ev.IP)
		n, ok := m.snap.neigh[ip]
		switch {
		case !ok:
			ev.Neigh, right = "none", false
		case len(n.MAC) != 6:
			ev.Neigh, right = miss.StateString(uint16(n.State)), false
		default:
			ev.Neigh = fmt.Sprintf("%s %s", n.MAC, miss.StateString(uint16(n.State)))
			right = right && store.MAC(n.MAC) == wantMAC
			if ev.Lease == nil {
				mac = store.MAC(n.MAC)
			}
		}
	} else if ev.MAC != "" {
		mac, _ = store.ParseMAC(ev.MAC)
	}
	if mac != (store.MAC{}) {
		dsts := m.snap.fdb[mac]
		switch {
		case len(dsts) == 0:
			ev.FDB, right = fmt.Sprintf("%s none", mac), false
		default:
			var s []string
			found := false
			for _, d := range dsts {
				s = append(s, d.String())
				found = found || d == wantDst
			}
			ev.FDB = fmt.Sprintf("%s dst %s", mac, strings.Join(s, ","))
			right = right && found
		}
	}
	if ev.Lease != nil {
		ev.Right = &right
	}
}

// take reads a device's entries.
func (m *Monitor) take(ifindex int) snapshot {
	s := snapshot{ifindex: ifindex, taken: time.Now()}
	if ifindex == 0 {
		return s
	}
	ns, err1 := m.kernel.Neighbours(ifindex)
	fs, err2 := m.kernel.FDB(ifindex)
	if err1 != nil || err2 != nil {
		return s
	}
	s.neigh = make(map[netip.Addr]fabric.Neighbour, len(ns))
	for _, n := range ns {
		s.neigh[n.IP] = n
	}
	s.fdb = make(map[store.MAC][]netip.Addr, len(fs))
	for _, f := range fs {
		mac := store.MAC(f.MAC)
		s.fdb[mac] = append(s.fdb[mac], f.Dst)
	}
	return s
}

// Text renders ev as one line.
func (ev Event) Text() string {
	var b strings.Builder
	subject := ev.IP
	if subject == "" {
		subject = ev.MAC
	} else if ev.MAC != "" {
		subject += " lladdr " + ev.MAC
	}
	fmt.Fprintf(&b, "%s %-13s %s %s %-36s %-10s", ev.Time.Format("15:04:05.000000"), ev.Device, ev.Family, ev.Kind, subject, ev.State)
	if ev.Verdict != "" {
		fmt.Fprintf(&b, " %s", ev.Verdict)
	}
	if ev.Lease != nil {
		fmt.Fprintf(&b, " lease=%s vtep=%s/%s", ev.Lease.Subnet, ev.Lease.PublicIP, ev.Lease.VtepMAC)
	}
	if ev.Neigh != "" {
		fmt.Fprintf(&b, " neigh=%q", ev.Neigh)
	}
	if ev.FDB != "" {
		fmt.Fprintf(&b, " fdb=%q", ev.FDB)
	}
	if ev.Right != nil {
		if *ev.Right {
			b.WriteString(" kernel=right")
		} else {
			b.WriteString(" kernel=WRONG")
		}
	}
	return b.String()
}
