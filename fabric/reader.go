package fabric

import (
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Reader reads the kernel's links and the routes, neighbour and FDB entries
// of devices in one network namespace. It never writes, and it owns a plain
// rtnetlink socket of its own: whoever only looks (health checks, metrics
// scrapes, `vtepd monitor`, the lab's assertions) does not open, nor wait
// on, the socket the miss path writes through.
type Reader struct {
	h *netlink.Handle
}

// OpenReader opens a reader of the calling thread's network namespace.
func OpenReader() (*Reader, error) { return OpenReaderAt(netns.None()) }

// OpenReaderAt opens a reader of network namespace ns.
func OpenReaderAt(ns netns.NsHandle) (*Reader, error) {
	h, err := openHandle(ns)
	if err != nil {
		return nil, err
	}
	return &Reader{h: h}, nil
}

// openHandle opens a vishvananda/netlink handle in ns. A request is
// answered in microseconds (a big dump in milliseconds); a kernel that does
// not answer within seconds is wedged, and we would rather say so than
// hang.
func openHandle(ns netns.NsHandle) (*netlink.Handle, error) {
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("fabric: open rtnetlink: %w", err)
	}
	if err := h.SetSocketTimeout(5 * time.Second); err != nil {
		h.Close()
		return nil, fmt.Errorf("fabric: set rtnetlink timeout: %w", err)
	}
	return h, nil
}

// Close releases the socket.
func (r *Reader) Close() error {
	r.h.Close()
	return nil
}

// Link is what a reader tells of a network interface.
type Link struct {
	Name  string
	Index int
	MAC   net.HardwareAddr
	MTU   int
	Up    bool
	// VXLAN says whether the interface is a VXLAN device.
	VXLAN bool
}

// Link describes the interface with the given index.
func (r *Reader) Link(ifindex int) (Link, error) {
	l, err := r.h.LinkByIndex(ifindex)
	if err != nil {
		return Link{}, fmt.Errorf("fabric: look up ifindex %d: %w", ifindex, err)
	}
	a := l.Attrs()
	_, vxlan := l.(*netlink.Vxlan)
	return Link{Name: a.Name, Index: a.Index, MAC: a.HardwareAddr, MTU: a.MTU, Up: a.Flags&net.FlagUp != 0, VXLAN: vxlan}, nil
}

// Neighbours lists the neighbour entries of the device with the given
// index, of both families: IPv4 ones first, then IPv6 ones, the kernel's
// own IPv6 multicast entries (ff02::…, NOARP) left out. A reader looks at
// any device, and needs not know which family it carries; what an entry is
// for is the caller's to judge (an overlay address or not).
func (r *Reader) Neighbours(ifindex int) ([]Neighbour, error) {
	out, err := listNeighbours(r.h, ifindex, unix.AF_UNSPEC)
	if err != nil {
		return nil, fmt.Errorf("fabric: ifindex %d: %w", ifindex, err)
	}
	return out, nil
}

// FDB lists the unicast forwarding entries of the VXLAN device with the
// given index (see Entries.FDB).
func (r *Reader) FDB(ifindex int) ([]FDBEntry, error) {
	out, err := listFDB(r.h, ifindex)
	if err != nil {
		return nil, fmt.Errorf("fabric: ifindex %d: %w", ifindex, err)
	}
	return out, nil
}

// Routes lists the routes, IPv4 and IPv6, of the device with the given
// index in the main table, the kernel's own left out.
func (r *Reader) Routes(ifindex int, name string) ([]Route, error) {
	return listRoutes(r.h, ifindex, name, unix.AF_UNSPEC)
}

// DirectRoutes lists the DirectRouting routes (Route.Direct) on the
// underlay device with the given index: its routes, IPv4 and IPv6, whose
// destination lies inside one of networks.
func (r *Reader) DirectRoutes(underlayIndex int, networks ...netip.Prefix) ([]Route, error) {
	return listDirectRoutes(r.h, underlayIndex, unix.AF_UNSPEC, networks)
}

// CheckDevice says what is missing for the device with the given index to
// carry the overlay: it must exist and be up, hold addr (an IPv4 /32 or an
// IPv6 /128, by addr's family), and have a route for each of routes.
func (r *Reader) CheckDevice(index int, name string, addr netip.Addr, routes []netip.Prefix) ([]string, error) {
	return checkDevice(r.h, index, name, addr, routes)
}

// FindUnderlay picks the underlay interface as spec says (see
// UnderlaySpec).
func (r *Reader) FindUnderlay(spec UnderlaySpec) (Underlay, error) {
	return findUnderlayWith(r.h, spec)
}

// listNeighbours dumps a device's neighbour entries of family (AF_INET,
// AF_INET6, or AF_UNSPEC for both, IPv4 first).
func listNeighbours(h *netlink.Handle, ifindex, family int) ([]Neighbour, error) {
	if family == unix.AF_UNSPEC {
		v4, err := listNeighbours(h, ifindex, unix.AF_INET)
		if err != nil {
			return nil, err
		}
		v6, err := listNeighbours(h, ifindex, unix.AF_INET6)
		return append(v4, v6...), err
	}
	list, err := listRetrying(func() ([]netlink.Neigh, error) { return h.NeighList(ifindex, family) })
	if err != nil {
		return nil, fmt.Errorf("list neighbours: %w", err)
	}
	out := make([]Neighbour, 0, len(list))
	for _, n := range list {
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if family == unix.AF_INET && !ip.Is4() || family == unix.AF_INET6 && !ip.Is6() {
			continue
		}
		// Every IPv6-capable device maps the multicast groups it joins
		// (all-routers, MLD, solicited-node) to NOARP entries of its own.
		if ip.Is6() && ip.IsMulticast() && n.State&unix.NUD_NOARP != 0 {
			continue
		}
		out = append(out, Neighbour{IP: ip, MAC: n.HardwareAddr, State: n.State})
	}
	return out, nil
}

func listFDB(h *netlink.Handle, ifindex int) ([]FDBEntry, error) {
	list, err := listRetrying(func() ([]netlink.Neigh, error) { return h.NeighList(ifindex, unix.AF_BRIDGE) })
	if err != nil {
		return nil, fmt.Errorf("list fdb: %w", err)
	}
	out := make([]FDBEntry, 0, len(list))
	for _, n := range list {
		dst, ok := netip.AddrFromSlice(n.IP)
		if !ok || len(n.HardwareAddr) != 6 || n.HardwareAddr[0]&1 != 0 {
			continue
		}
		out = append(out, FDBEntry{MAC: n.HardwareAddr, Dst: dst.Unmap(), State: n.State, Unused: clockTicks(n.Used)})
	}
	return out, nil
}

// clockTicks converts the kernel's NDA_CACHEINFO times, in USER_HZ clock
// ticks (100 a second, whatever the kernel's HZ), to a duration.
func clockTicks(t uint32) time.Duration { return time.Duration(t) * (time.Second / 100) }
