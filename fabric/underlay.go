package fabric

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Underlay is the interface VXLAN packets leave by.
type Underlay struct {
	Name  string
	Index int
	MTU   int
	// Addr is the interface address used as the VXLAN source.
	Addr netip.Addr
	// PublicIP is the address peers send to: Addr unless overridden for a
	// host behind NAT.
	PublicIP netip.Addr
}

// UnderlaySpec says how to choose the underlay, as flannel's flags do.
type UnderlaySpec struct {
	// Ifaces are interface names or addresses, tried in order; the first
	// that exists wins.
	Ifaces []string
	// IfaceRegexes match interface names or addresses, tried in order after
	// Ifaces.
	IfaceRegexes []*regexp.Regexp
	// PublicIP, if valid, is published to peers instead of the interface
	// address.
	PublicIP netip.Addr
}

// findUnderlayWith picks the underlay interface: the first of spec.Ifaces
// that exists, else the first interface matching spec.IfaceRegexes, else
// the interface of the default route.
func findUnderlayWith(h *netlink.Handle, spec UnderlaySpec) (Underlay, error) {
	u, err := findUnderlay(h, spec)
	if err != nil {
		return Underlay{}, err
	}
	u.PublicIP = u.Addr
	if spec.PublicIP.IsValid() {
		u.PublicIP = spec.PublicIP
	}
	return u, nil
}

func findUnderlay(h *netlink.Handle, spec UnderlaySpec) (Underlay, error) {
	links, err := h.LinkList()
	if err != nil {
		return Underlay{}, fmt.Errorf("fabric: list links: %w", err)
	}
	addrs, err := listRetrying(func() ([]netlink.Addr, error) { return h.AddrList(nil, unix.AF_INET) })
	if err != nil {
		return Underlay{}, fmt.Errorf("fabric: list addresses: %w", err)
	}
	// Every interface, with its global IPv4 addresses in the kernel's
	// order: the first is the one an interface chosen by name uses.
	type candidate struct {
		Underlay
		addrs []netip.Addr
	}
	candidates := make([]candidate, 0, len(links))
	for _, l := range links {
		a := l.Attrs()
		c := candidate{Underlay: Underlay{Name: a.Name, Index: a.Index, MTU: a.MTU}}
		for _, ad := range addrs {
			if ad.LinkIndex != a.Index || ad.Scope != unix.RT_SCOPE_UNIVERSE {
				continue
			}
			if ip, ok := netip.AddrFromSlice(ad.IP.To4()); ok {
				c.addrs = append(c.addrs, ip)
			}
		}
		if len(c.addrs) > 0 {
			c.Addr = c.addrs[0]
		}
		candidates = append(candidates, c)
	}
	// by returns the interface holding ip, with ip as its address.
	by := func(match func(c candidate, ip netip.Addr) bool) (Underlay, bool) {
		for _, c := range candidates {
			for _, ip := range c.addrs {
				if match(c, ip) {
					u := c.Underlay
					u.Addr = ip
					return u, true
				}
			}
		}
		return Underlay{}, false
	}

	// As flannel's --iface and --iface-regex: each is tried in order, and
	// the first that names an interface with an IPv4 address wins; one
	// that does not is skipped, and said in the error if none wins.
	var tried []string
	for _, want := range spec.Ifaces {
		if ip, err := netip.ParseAddr(want); err == nil {
			if u, ok := by(func(_ candidate, a netip.Addr) bool { return a == ip }); ok {
				return u, nil
			}
			tried = append(tried, fmt.Sprintf("%s (no interface has this address)", want))
			continue
		}
		i := slices.IndexFunc(candidates, func(c candidate) bool { return c.Name == want })
		switch {
		case i < 0:
			tried = append(tried, fmt.Sprintf("%s (no such interface)", want))
		case !candidates[i].Addr.IsValid():
			tried = append(tried, fmt.Sprintf("%s (no IPv4 address)", want))
		default:
			return candidates[i].Underlay, nil
		}
	}
	for _, re := range spec.IfaceRegexes {
		// Addresses first, then names, as flannel matches them.
		if u, ok := by(func(_ candidate, a netip.Addr) bool { return re.MatchString(a.String()) }); ok {
			return u, nil
		}
		if u, ok := by(func(c candidate, a netip.Addr) bool { return a == c.Addr && re.MatchString(c.Name) }); ok {
			return u, nil
		}
		tried = append(tried, fmt.Sprintf("/%s/ (matches no address, nor the name of an interface with one)", re))
	}
	if len(tried) > 0 {
		return Underlay{}, fmt.Errorf("fabric: no underlay interface found; tried %s", strings.Join(tried, ", "))
	}

	routes, err := listRetrying(func() ([]netlink.Route, error) { return h.RouteList(nil, unix.AF_INET) })
	if err != nil {
		return Underlay{}, fmt.Errorf("fabric: list routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst != nil && !isDefault(r.Dst) {
			continue
		}
		for _, c := range candidates {
			if c.Index == r.LinkIndex && c.Addr.IsValid() {
				return c.Underlay, nil
			}
		}
	}
	return Underlay{}, errors.New("fabric: no default route to choose the underlay interface by; name it with --iface")
}

func isDefault(n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}
