// Package subnetfile reads and writes flannel's subnet file, the contract
// between the overlay agent and Docker (or anything else that builds the
// host's container bridge from it):
//
//	FLANNEL_NETWORK=10.5.0.0/16
//	FLANNEL_SUBNET=10.5.48.1/24
//	FLANNEL_IPV6_NETWORK=fd00:10::/48
//	FLANNEL_IPV6_SUBNET=fd00:10:0:30::1/64
//	FLANNEL_MTU=1450
//	FLANNEL_IPMASQ=false
//
// As flanneld writes it: the IPv4 lines only for an overlay with IPv4, the
// IPv6 lines only for one with IPv6 (dual-stack has both, IPv6-only no
// FLANNEL_NETWORK or FLANNEL_SUBNET at all).
package subnetfile

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// DefaultPath is where flanneld writes the file.
const DefaultPath = "/run/flannel/subnet.env"

// Env is the content of a subnet file. Each family is there or not as a
// pair: Network with Subnet (IPv4), IPv6Network with IPv6Subnet; an absent
// one is the zero netip.Prefix.
type Env struct {
	// Network is the whole overlay's IPv4 network.
	Network netip.Prefix
	// Subnet is the host's subnet with the bridge's address: 10.5.48.1/24.
	Subnet netip.Prefix
	// IPv6Network is the overlay's IPv6 network, e.g. fd00:10::/48.
	IPv6Network netip.Prefix
	// IPv6Subnet is the host's IPv6 subnet with the bridge's address, as
	// BridgeSubnet gives it: fd00:10:0:30::1/64.
	IPv6Subnet netip.Prefix
	// MTU for containers: the VXLAN device's MTU.
	MTU int
	// IPMasq says whether the overlay agent masquerades traffic leaving the
	// overlay (so Docker should not).
	IPMasq bool
}

// BridgeSubnet returns the value for FLANNEL_SUBNET or FLANNEL_IPV6_SUBNET:
// the subnet's first host address (.1; .0 is on the VXLAN device) with the
// subnet's length. flannel writes the IPv6 subnet the same way
// (fd00:10:0:30::1/64).
func BridgeSubnet(subnet netip.Prefix) netip.Prefix {
	return netip.PrefixFrom(subnet.Masked().Addr().Next(), subnet.Bits())
}

// Write writes e to path atomically: readers see the old file or the new
// one, never a torn write. It does not wait for the disk (no fsync): the
// file lives in /run, which does not outlive a reboot, and vtepd writes it
// again at every start before anything reads it; on a disk-backed /run an
// fsync cost 4-5 ms of a start that must take few. The lines are flanneld's, in its order; a family is written
// only when its network and subnet are both there. Half a family, or none
// at all, is an error: a reader could build no bridge from it.
func Write(path string, e Env) error {
	var b bytes.Buffer
	families := 0
	for _, f := range []struct {
		network, subnet string
		n, s            netip.Prefix
	}{
		{"FLANNEL_NETWORK", "FLANNEL_SUBNET", e.Network, e.Subnet},
		{"FLANNEL_IPV6_NETWORK", "FLANNEL_IPV6_SUBNET", e.IPv6Network, e.IPv6Subnet},
	} {
		switch {
		case f.n.IsValid() && f.s.IsValid():
			fmt.Fprintf(&b, "%s=%s\n%s=%s\n", f.network, f.n, f.subnet, f.s)
			families++
		case f.n.IsValid():
			return fmt.Errorf("subnetfile: write %s: %s=%s without %s", path, f.network, f.n, f.subnet)
		case f.s.IsValid():
			return fmt.Errorf("subnetfile: write %s: %s=%s without %s", path, f.subnet, f.s, f.network)
		}
	}
	if families == 0 {
		return fmt.Errorf("subnetfile: write %s: neither an IPv4 nor an IPv6 network and subnet", path)
	}
	fmt.Fprintf(&b, "FLANNEL_MTU=%d\n", e.MTU)
	fmt.Fprintf(&b, "FLANNEL_IPMASQ=%t\n", e.IPMasq)

	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("subnetfile: %w", err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("subnetfile: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if _, err := tmp.Write(b.Bytes()); err != nil {
		tmp.Close()
		return fmt.Errorf("subnetfile: write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("subnetfile: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("subnetfile: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("subnetfile: %w", err)
	}
	return nil
}

// Read parses a subnet file. Unknown variables and comments are ignored; a
// known one with a bad value is an error naming it. A family the file does
// not have is left zero: callers check for what they need.
func Read(path string) (Env, error) {
	f, err := os.Open(path)
	if err != nil {
		return Env{}, fmt.Errorf("subnetfile: %w", err)
	}
	defer f.Close()
	var e Env
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if !ok || strings.HasPrefix(k, "#") {
			continue
		}
		bad := func(err error) error {
			return fmt.Errorf("subnetfile: %s:%d: %s=%q: %v", path, line, k, v, err)
		}
		switch k {
		case "FLANNEL_NETWORK":
			if e.Network, err = netip.ParsePrefix(v); err != nil {
				return Env{}, bad(err)
			}
		case "FLANNEL_SUBNET":
			if e.Subnet, err = netip.ParsePrefix(v); err != nil {
				return Env{}, bad(err)
			}
		case "FLANNEL_IPV6_NETWORK":
			if e.IPv6Network, err = netip.ParsePrefix(v); err != nil {
				return Env{}, bad(err)
			}
		case "FLANNEL_IPV6_SUBNET":
			if e.IPv6Subnet, err = netip.ParsePrefix(v); err != nil {
				return Env{}, bad(err)
			}
		case "FLANNEL_MTU":
			if e.MTU, err = strconv.Atoi(v); err != nil {
				return Env{}, bad(err)
			}
		case "FLANNEL_IPMASQ":
			if e.IPMasq, err = strconv.ParseBool(v); err != nil {
				return Env{}, bad(err)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return Env{}, fmt.Errorf("subnetfile: read %s: %w", path, err)
	}
	return e, nil
}
