package fabric

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
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

// FindUnderlay picks the underlay interface: the first of spec.Ifaces that
// exists, else the first interface matching spec.IfaceRegexes, else the
// interface of the default route.
func FindUnderlay(h *netlink.Handle, spec UnderlaySpec) (Underlay, error) {
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
	addrs, err := h.AddrList(nil, unix.AF_INET)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return Underlay{}, fmt.Errorf("fabric: list addresses: %w", err)
	}
	candidates := make([]Underlay, 0, len(links))
	for _, l := range links {
		a := l.Attrs()
		u := Underlay{Name: a.Name, Index: a.Index, MTU: a.MTU}
		for _, ad := range addrs {
			if ad.LinkIndex != a.Index || ad.Scope != unix.RT_SCOPE_UNIVERSE {
				continue
			}
			if ip, ok := netip.AddrFromSlice(ad.IP.To4()); ok {
				u.Addr = ip
				break
			}
		}
		candidates = append(candidates, u)
	}

	var tried []string
	for _, want := range spec.Ifaces {
		if ip, err := netip.ParseAddr(want); err == nil {
			for _, ad := range addrs {
				if a, ok := netip.AddrFromSlice(ad.IP.To4()); ok && a == ip {
					for _, u := range candidates {
						if u.Index == ad.LinkIndex {
							u.Addr = ip
							return u, nil
						}
					}
				}
			}
			tried = append(tried, fmt.Sprintf("%s (no interface has this address)", want))
			continue
		}
		for _, u := range candidates {
			if u.Name != want {
				continue
			}
			if !u.Addr.IsValid() {
				return Underlay{}, fmt.Errorf("fabric: interface %s has no IPv4 address", want)
			}
			return u, nil
		}
		tried = append(tried, fmt.Sprintf("%s (no such interface)", want))
	}
	for _, re := range spec.IfaceRegexes {
		for _, u := range candidates {
			if !u.Addr.IsValid() {
				continue
			}
			if re.MatchString(u.Name) || re.MatchString(u.Addr.String()) {
				return u, nil
			}
		}
		tried = append(tried, fmt.Sprintf("/%s/ (no interface name or address matches)", re))
	}
	if len(tried) > 0 {
		return Underlay{}, fmt.Errorf("fabric: no underlay interface found; tried %s", strings.Join(tried, ", "))
	}

	routes, err := h.RouteList(nil, unix.AF_INET)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return Underlay{}, fmt.Errorf("fabric: list routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst != nil && !isDefault(r.Dst) {
			continue
		}
		for _, u := range candidates {
			if u.Index == r.LinkIndex && u.Addr.IsValid() {
				return u, nil
			}
		}
	}
	return Underlay{}, errors.New("fabric: no default route to choose the underlay interface by; name it with --iface")
}

func isDefault(n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}
