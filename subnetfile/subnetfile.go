// Package subnetfile reads and writes flannel's subnet file, the contract
// between the overlay agent and Docker (or anything else that builds the
// host's container bridge from it):
//
//	FLANNEL_NETWORK=10.5.0.0/16
//	FLANNEL_SUBNET=10.5.48.1/24
//	FLANNEL_MTU=1450
//	FLANNEL_IPMASQ=false
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

// Env is the content of a subnet file.
type Env struct {
	// Network is the whole overlay.
	Network netip.Prefix
	// Subnet is the host's subnet with the bridge's address: 10.5.48.1/24.
	Subnet netip.Prefix
	// MTU for containers: the VXLAN device's MTU.
	MTU int
	// IPMasq says whether the overlay agent masquerades traffic leaving the
	// overlay (so Docker should not).
	IPMasq bool
}

// BridgeSubnet returns the value for FLANNEL_SUBNET: the subnet's first host
// address (.1; .0 is on the VXLAN device) with the subnet's length.
func BridgeSubnet(subnet netip.Prefix) netip.Prefix {
	return netip.PrefixFrom(subnet.Masked().Addr().Next(), subnet.Bits())
}

// Write writes e to path atomically: readers see the old file or the new
// one, never a torn write, and the new one survives a crash once Write
// returns.
func Write(path string, e Env) error {
	var b bytes.Buffer
	fmt.Fprintf(&b, "FLANNEL_NETWORK=%s\n", e.Network)
	fmt.Fprintf(&b, "FLANNEL_SUBNET=%s\n", e.Subnet)
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
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("subnetfile: sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("subnetfile: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("subnetfile: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync() // make the rename durable; best effort
		d.Close()
	}
	return nil
}

// Read parses a subnet file. Unknown variables (FLANNEL_IPV6_*, comments)
// are ignored; a known one with a bad value is an error naming it.
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
