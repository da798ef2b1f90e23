package miss

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/vtepd/vtepd/store"
	"golang.org/x/sys/unix"
)

// Kind says what the kernel is missing.
type Kind uint8

const (
	// L3 is a neighbour miss: an IP address without a MAC.
	L3 Kind = iota + 1
	// L2 is an FDB miss: a MAC without a VTEP to send to.
	L2
)

func (k Kind) String() string {
	switch k {
	case L3:
		return "L3"
	case L2:
		return "L2"
	default:
		return fmt.Sprintf("Kind(%d)", uint8(k))
	}
}

// Miss is one request from the kernel.
type Miss struct {
	Kind    Kind
	Ifindex int
	// State is the neighbour state the kernel reports: INCOMPLETE or PROBE
	// for application probes, STALE for the VXLAN driver's own misses.
	State uint16
	// IP is the address asked about (L3).
	IP netip.Addr
	// MAC is the destination MAC without an FDB entry (L2), or the cached
	// MAC of an aged entry being re-confirmed (L3 PROBE). HasMAC says
	// whether the kernel sent one.
	MAC    store.MAC
	HasMAC bool
	// Received is when the message was read from the socket.
	Received time.Time
}

func (m Miss) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s ifindex %d", m.Kind, m.Ifindex)
	if m.IP.IsValid() {
		fmt.Fprintf(&b, " %s", m.IP)
	}
	if m.HasMAC {
		fmt.Fprintf(&b, " lladdr %s", m.MAC)
	}
	fmt.Fprintf(&b, " %s", StateString(m.State))
	return b.String()
}

// StateString names a NUD_* neighbour state the way `ip neigh` does.
func StateString(s uint16) string {
	names := []struct {
		bit  uint16
		name string
	}{
		{unix.NUD_INCOMPLETE, "INCOMPLETE"}, {unix.NUD_REACHABLE, "REACHABLE"}, {unix.NUD_STALE, "STALE"},
		{unix.NUD_DELAY, "DELAY"}, {unix.NUD_PROBE, "PROBE"}, {unix.NUD_FAILED, "FAILED"},
		{unix.NUD_NOARP, "NOARP"}, {unix.NUD_PERMANENT, "PERMANENT"},
	}
	var parts []string
	for _, n := range names {
		if s&n.bit != 0 {
			parts = append(parts, n.name)
		}
	}
	if len(parts) == 0 {
		return "NONE"
	}
	return strings.Join(parts, "|")
}

const (
	sizeofNdmsg  = 12
	sizeofRtattr = 4
)

var (
	errShort     = errors.New("message shorter than struct ndmsg")
	errBadAttr   = errors.New("malformed attribute")
	errNoSubject = errors.New("neither NDA_DST nor NDA_LLADDR")
)

// Decode decodes the body of an RTM_GETNEIGH message (the bytes after the
// netlink header) into a Miss. It classifies by attributes: NDA_DST makes an
// L3 miss, NDA_LLADDR alone an L2 miss. It does not allocate.
func Decode(body []byte) (Miss, error) {
	if len(body) < sizeofNdmsg {
		return Miss{}, errShort
	}
	m := Miss{
		Ifindex: int(int32(binary.NativeEndian.Uint32(body[4:8]))),
		State:   binary.NativeEndian.Uint16(body[8:10]),
	}
	var hasDst bool
	for b := body[sizeofNdmsg:]; len(b) >= sizeofRtattr; {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		typ := binary.NativeEndian.Uint16(b[2:4]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		if l < sizeofRtattr || l > len(b) {
			return Miss{}, errBadAttr
		}
		v := b[sizeofRtattr:l]
		switch typ {
		case unix.NDA_DST:
			switch len(v) {
			case 4:
				m.IP = netip.AddrFrom4([4]byte(v))
			case 16:
				m.IP = netip.AddrFrom16([16]byte(v))
			default:
				return Miss{}, fmt.Errorf("NDA_DST of %d bytes", len(v))
			}
			hasDst = true
		case unix.NDA_LLADDR:
			if len(v) == 6 {
				m.MAC, m.HasMAC = store.MAC(v), true
			}
		}
		al := (l + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1)
		if al > len(b) {
			break
		}
		b = b[al:]
	}
	switch {
	case hasDst:
		m.Kind = L3
	case m.HasMAC:
		m.Kind = L2
	default:
		return Miss{}, errNoSubject
	}
	return m, nil
}
