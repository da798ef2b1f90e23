package miss

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"net/netip"
	"strings"
	"testing"

	"github.com/vtepd/vtepd/store"
	"golang.org/x/sys/unix"
)

// rtattr is one netlink attribute of a test message.
type rtattr struct {
	typ uint16
	val []byte
}

// ndmsgBody builds the body of an RTM_GETNEIGH message the way the kernel
// does (neigh_fill_info, vxlan_fdb_info): struct ndmsg in native endian,
//
//	u8 family, u8 pad1, u16 pad2, s32 ifindex, u16 state, u8 flags, u8 type
//
// then each attribute as u16 len (header included), u16 type, the value, and
// zero padding to a multiple of 4 (nla_put pads the last attribute too).
func ndmsgBody(family uint8, ifindex int32, state uint16, attrs ...rtattr) []byte {
	b := make([]byte, sizeofNdmsg)
	b[0] = family
	binary.NativeEndian.PutUint32(b[4:8], uint32(ifindex))
	binary.NativeEndian.PutUint16(b[8:10], state)
	b[10] = 0                // ndm_flags
	b[11] = unix.RTN_UNICAST // ndm_type
	for _, a := range attrs {
		b = binary.NativeEndian.AppendUint16(b, uint16(4+len(a.val)))
		b = binary.NativeEndian.AppendUint16(b, a.typ)
		b = append(b, a.val...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
	}
	return b
}

func u32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

// cacheinfo is a struct nda_cacheinfo (four u32), as neigh_fill_info sends it.
var cacheinfo = make([]byte, 16)

var (
	testIfindex = int32(7)
	remoteIP    = netip.MustParseAddr("10.5.2.5")
	remoteMAC   = store.MAC{0xba, 0xc7, 0x11, 0x22, 0x33, 0x44}
	v6LinkLocal = netip.MustParseAddr("fe80::b8c7:11ff:fe22:3344")
	// VXLAN_N_VID, the remote_vni of the fake fdb entry vxlan_ip_miss and
	// vxlan_fdb_miss notify with; it differs from the device's VNI, so
	// newer kernels include it as NDA_VNI.
	vxlanNVID = uint32(1 << 24)
)

// The kernel's miss messages, one per row of kernel-notes.md.
var (
	// neigh_app_ns: the host routes to an address with no entry.
	appProbeIncomplete = ndmsgBody(unix.AF_INET, testIfindex, unix.NUD_INCOMPLETE,
		rtattr{unix.NDA_DST, remoteIP.AsSlice()},
		rtattr{unix.NDA_CACHEINFO, cacheinfo},
		rtattr{unix.NDA_PROBES, u32(3)},
	)
	// neigh_app_ns on an aged entry: the cached MAC comes along.
	appProbePROBE = ndmsgBody(unix.AF_INET, testIfindex, unix.NUD_PROBE,
		rtattr{unix.NDA_DST, remoteIP.AsSlice()},
		rtattr{unix.NDA_LLADDR, remoteMAC[:]},
		rtattr{unix.NDA_CACHEINFO, cacheinfo},
		rtattr{unix.NDA_PROBES, u32(0)},
	)
	// vxlan_ip_miss on an older kernel: NDA_DST only.
	vxlanIPMiss = ndmsgBody(unix.AF_INET, testIfindex, unix.NUD_STALE,
		rtattr{unix.NDA_DST, remoteIP.AsSlice()},
		rtattr{unix.NDA_CACHEINFO, cacheinfo},
	)
	// vxlan_ip_miss on a newer kernel: NDA_DST and NDA_VNI.
	vxlanIPMissVNI = ndmsgBody(unix.AF_INET, testIfindex, unix.NUD_STALE,
		rtattr{unix.NDA_DST, remoteIP.AsSlice()},
		rtattr{unix.NDA_VNI, u32(vxlanNVID)},
		rtattr{unix.NDA_CACHEINFO, cacheinfo},
	)
	// vxlan_fdb_miss: AF_INET although it is an FDB question, LLADDR only.
	vxlanFDBMiss = ndmsgBody(unix.AF_INET, testIfindex, unix.NUD_STALE,
		rtattr{unix.NDA_LLADDR, remoteMAC[:]},
		rtattr{unix.NDA_CACHEINFO, cacheinfo},
	)
	// vxlan_fdb_miss with a port and a VNI.
	vxlanFDBMissPortVNI = ndmsgBody(unix.AF_INET, testIfindex, unix.NUD_STALE,
		rtattr{unix.NDA_LLADDR, remoteMAC[:]},
		rtattr{unix.NDA_PORT, []byte{0x21, 0x18}}, // 8472, big endian
		rtattr{unix.NDA_VNI, u32(vxlanNVID)},
		rtattr{unix.NDA_CACHEINFO, cacheinfo},
	)
	// vxlan_ip_miss for IPv6 neighbour discovery.
	vxlanIPMiss6 = ndmsgBody(unix.AF_INET6, testIfindex, unix.NUD_STALE,
		rtattr{unix.NDA_DST, v6LinkLocal.AsSlice()},
		rtattr{unix.NDA_VNI, u32(vxlanNVID)},
	)
)

func TestNdmsgBodyMatchesKernelLayout(t *testing.T) {
	// Check the builder against a message written out by hand, so that the
	// other tests do not rest on a builder with the same mistake as Decode.
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("the hand-written message is little endian")
	}
	want, err := hex.DecodeString(strings.Join([]string{
		"02", "00", "0000", // family AF_INET, pad1, pad2
		"07000000", // ifindex 7
		"0100",     // state NUD_INCOMPLETE
		"00", "01", // flags, type RTN_UNICAST
		"0800", "0100", "0a050205", // NDA_DST 10.5.2.5
		"1400", "0300", strings.Repeat("00", 16), // NDA_CACHEINFO
		"0800", "0400", "03000000", // NDA_PROBES 3
	}, ""))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(appProbeIncomplete, want) {
		t.Fatalf("builder:\n got %x\nwant %x", appProbeIncomplete, want)
	}
	m, err := Decode(want)
	if err != nil {
		t.Fatal(err)
	}
	if m.Kind != L3 || m.IP != remoteIP || m.Ifindex != 7 || m.State != unix.NUD_INCOMPLETE || m.HasMAC {
		t.Fatalf("Decode(hand-written) = %+v", m)
	}
}

func TestDecode(t *testing.T) {
	tests := []struct {
		name string
		body []byte
		want Miss
	}{
		{"app probe INCOMPLETE", appProbeIncomplete,
			Miss{Kind: L3, Ifindex: 7, State: unix.NUD_INCOMPLETE, IP: remoteIP}},
		{"app probe PROBE with cached MAC", appProbePROBE,
			Miss{Kind: L3, Ifindex: 7, State: unix.NUD_PROBE, IP: remoteIP, MAC: remoteMAC, HasMAC: true}},
		{"vxlan ip miss", vxlanIPMiss,
			Miss{Kind: L3, Ifindex: 7, State: unix.NUD_STALE, IP: remoteIP}},
		{"vxlan ip miss with NDA_VNI", vxlanIPMissVNI,
			Miss{Kind: L3, Ifindex: 7, State: unix.NUD_STALE, IP: remoteIP}},
		{"vxlan fdb miss (AF_INET)", vxlanFDBMiss,
			Miss{Kind: L2, Ifindex: 7, State: unix.NUD_STALE, MAC: remoteMAC, HasMAC: true}},
		{"vxlan fdb miss with NDA_PORT and NDA_VNI", vxlanFDBMissPortVNI,
			Miss{Kind: L2, Ifindex: 7, State: unix.NUD_STALE, MAC: remoteMAC, HasMAC: true}},
		{"vxlan ip miss IPv6", vxlanIPMiss6,
			Miss{Kind: L3, Ifindex: 7, State: unix.NUD_STALE, IP: v6LinkLocal}},
		{"fdb miss as AF_BRIDGE", ndmsgBody(unix.AF_BRIDGE, 3, unix.NUD_STALE, rtattr{unix.NDA_LLADDR, remoteMAC[:]}),
			Miss{Kind: L2, Ifindex: 3, State: unix.NUD_STALE, MAC: remoteMAC, HasMAC: true}},
		{"family is not what classifies: AF_INET6 body with an IPv4 NDA_DST",
			ndmsgBody(unix.AF_INET6, 7, unix.NUD_INCOMPLETE, rtattr{unix.NDA_DST, remoteIP.AsSlice()}),
			Miss{Kind: L3, Ifindex: 7, State: unix.NUD_INCOMPLETE, IP: remoteIP}},
		{"attribute type flags are masked",
			ndmsgBody(unix.AF_INET, 7, unix.NUD_INCOMPLETE, rtattr{unix.NDA_DST | unix.NLA_F_NET_BYTEORDER, remoteIP.AsSlice()}),
			Miss{Kind: L3, Ifindex: 7, State: unix.NUD_INCOMPLETE, IP: remoteIP}},
		{"LLADDR of another length is not a MAC",
			ndmsgBody(unix.AF_INET, 7, unix.NUD_PROBE, rtattr{unix.NDA_DST, remoteIP.AsSlice()}, rtattr{unix.NDA_LLADDR, make([]byte, 20)}),
			Miss{Kind: L3, Ifindex: 7, State: unix.NUD_PROBE, IP: remoteIP}},
		{"largest ifindex", ndmsgBody(unix.AF_INET, 1<<31-1, unix.NUD_INCOMPLETE, rtattr{unix.NDA_DST, remoteIP.AsSlice()}),
			Miss{Kind: L3, Ifindex: 1<<31 - 1, State: unix.NUD_INCOMPLETE, IP: remoteIP}},
		{"last attribute without its padding",
			ndmsgBody(unix.AF_INET, 7, unix.NUD_STALE, rtattr{unix.NDA_PORT, []byte{0x21, 0x18}}, rtattr{unix.NDA_LLADDR, remoteMAC[:]})[:12+8+10],
			Miss{Kind: L2, Ifindex: 7, State: unix.NUD_STALE, MAC: remoteMAC, HasMAC: true}},
		{"trailing bytes shorter than an attribute header",
			append(ndmsgBody(unix.AF_INET, 7, unix.NUD_INCOMPLETE, rtattr{unix.NDA_DST, remoteIP.AsSlice()}), 0, 0, 0),
			Miss{Kind: L3, Ifindex: 7, State: unix.NUD_INCOMPLETE, IP: remoteIP}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode(tt.body)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if got != tt.want {
				t.Errorf("Decode =\n %+v\nwant\n %+v", got, tt.want)
			}
		})
	}
}

func TestDecodeMalformed(t *testing.T) {
	dst := rtattr{unix.NDA_DST, remoteIP.AsSlice()}
	withAttrLen := func(l uint16) []byte {
		b := ndmsgBody(unix.AF_INET, 7, unix.NUD_INCOMPLETE, dst)
		binary.NativeEndian.PutUint16(b[sizeofNdmsg:], l)
		return b
	}
	tests := []struct {
		name string
		body []byte
	}{
		{"nil", nil},
		{"empty", []byte{}},
		{"11 bytes", appProbeIncomplete[:11]},
		{"ndmsg without attributes", appProbeIncomplete[:sizeofNdmsg]},
		{"attribute length 0", withAttrLen(0)},
		{"attribute length 3", withAttrLen(3)},
		{"attribute length beyond the buffer", withAttrLen(9)},
		{"attribute length far beyond the buffer", withAttrLen(0xffff)},
		{"attribute cut short", appProbeIncomplete[:sizeofNdmsg+6]},
		{"NDA_DST of 5 bytes", ndmsgBody(unix.AF_INET, 7, unix.NUD_INCOMPLETE, rtattr{unix.NDA_DST, []byte{10, 5, 2, 5, 0}})},
		{"NDA_DST of 0 bytes", ndmsgBody(unix.AF_INET, 7, unix.NUD_INCOMPLETE, rtattr{unix.NDA_DST, nil})},
		{"NDA_DST of 6 bytes next to a good LLADDR", ndmsgBody(unix.AF_INET, 7, unix.NUD_PROBE,
			rtattr{unix.NDA_LLADDR, remoteMAC[:]}, rtattr{unix.NDA_DST, make([]byte, 6)})},
		{"neither DST nor LLADDR", ndmsgBody(unix.AF_INET, 7, unix.NUD_INCOMPLETE,
			rtattr{unix.NDA_CACHEINFO, cacheinfo}, rtattr{unix.NDA_PROBES, u32(3)})},
		{"LLADDR of 5 bytes only", ndmsgBody(unix.AF_INET, 7, unix.NUD_STALE, rtattr{unix.NDA_LLADDR, remoteMAC[:5]})},
		{"good DST then a broken attribute", append(ndmsgBody(unix.AF_INET, 7, unix.NUD_INCOMPLETE, dst), 0xff, 0, 1, 0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Decode(tt.body)
			if err == nil {
				t.Fatalf("Decode(%x) = %+v, want an error", tt.body, m)
			}
			if m != (Miss{}) {
				t.Errorf("Decode returned %+v with its error, want the zero Miss", m)
			}
		})
	}
}

func TestDecodeDoesNotAllocate(t *testing.T) {
	for name, body := range validBodies() {
		allocs := testing.AllocsPerRun(100, func() {
			if _, err := Decode(body); err != nil {
				t.Fatal(err)
			}
		})
		if allocs != 0 {
			t.Errorf("%s: Decode allocates %v times per call, want 0", name, allocs)
		}
	}
}

func validBodies() map[string][]byte {
	return map[string][]byte{
		"app probe INCOMPLETE": appProbeIncomplete,
		"app probe PROBE":      appProbePROBE,
		"vxlan ip miss":        vxlanIPMiss,
		"vxlan ip miss VNI":    vxlanIPMissVNI,
		"vxlan fdb miss":       vxlanFDBMiss,
		"vxlan fdb miss port":  vxlanFDBMissPortVNI,
		"vxlan ip miss IPv6":   vxlanIPMiss6,
	}
}

func TestKindString(t *testing.T) {
	for k, want := range map[Kind]string{L3: "L3", L2: "L2", 0: "Kind(0)", 9: "Kind(9)"} {
		if got := k.String(); got != want {
			t.Errorf("Kind(%d).String() = %q, want %q", uint8(k), got, want)
		}
	}
}

func TestStateString(t *testing.T) {
	for s, want := range map[uint16]string{
		0:                                   "NONE",
		unix.NUD_INCOMPLETE:                 "INCOMPLETE",
		unix.NUD_PROBE:                      "PROBE",
		unix.NUD_STALE:                      "STALE",
		unix.NUD_REACHABLE | unix.NUD_NOARP: "REACHABLE|NOARP",
		unix.NUD_PERMANENT:                  "PERMANENT",
	} {
		if got := StateString(s); got != want {
			t.Errorf("StateString(%#x) = %q, want %q", s, got, want)
		}
	}
}

func TestMissString(t *testing.T) {
	m, err := Decode(appProbePROBE)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := m.String(), "L3 ifindex 7 10.5.2.5 lladdr ba:c7:11:22:33:44 PROBE"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	m, err = Decode(vxlanFDBMiss)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := m.String(), "L2 ifindex 7 lladdr ba:c7:11:22:33:44 STALE"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

// refAttrs walks the attributes of body independently of Decode and says
// whether they are well formed and what they hold. A later attribute of the
// same type overrides an earlier one, as in Decode.
type refAttrs struct {
	wellFormed bool
	hasDst     bool
	dst        netip.Addr
	hasMAC     bool
	mac        store.MAC
}

func walkAttrs(body []byte) (r refAttrs) {
	if len(body) < 12 {
		return r
	}
	for off := 12; len(body)-off >= 4; {
		l := int(binary.NativeEndian.Uint16(body[off:]))
		typ := binary.NativeEndian.Uint16(body[off+2:]) & 0x3fff // without NLA_F_NESTED, NLA_F_NET_BYTEORDER
		if l < 4 || off+l > len(body) {
			return refAttrs{}
		}
		val := body[off+4 : off+l]
		switch typ {
		case 1: // NDA_DST
			if len(val) != 4 && len(val) != 16 {
				return refAttrs{}
			}
			r.hasDst = true
			r.dst, _ = netip.AddrFromSlice(val)
		case 2: // NDA_LLADDR
			if len(val) == 6 {
				r.hasMAC = true
				copy(r.mac[:], val)
			}
		}
		off += (l + 3) / 4 * 4
	}
	r.wellFormed = true
	return r
}

// FuzzDecode checks that Decode never panics and that whatever it accepts
// is classified by its attributes. Plain `go test` runs only the seeds.
func FuzzDecode(f *testing.F) {
	for _, b := range validBodies() {
		f.Add(b)
	}
	f.Add(appProbeIncomplete[:11])
	f.Add(append(ndmsgBody(unix.AF_INET, 7, unix.NUD_INCOMPLETE), 0xff, 0xff, 1, 0))
	f.Fuzz(func(t *testing.T, body []byte) {
		m, err := Decode(body)
		ref := walkAttrs(body)
		if err != nil {
			if ref.wellFormed && (ref.hasDst || ref.hasMAC) {
				t.Fatalf("Decode(%x) failed (%v) on a well-formed message with DST %v / MAC %v", body, err, ref.hasDst, ref.hasMAC)
			}
			if m != (Miss{}) {
				t.Fatalf("Decode(%x) returned %+v with its error", body, m)
			}
			return
		}
		if !ref.wellFormed {
			t.Fatalf("Decode(%x) accepted a malformed message: %+v", body, m)
		}
		if m.Ifindex != int(int32(binary.NativeEndian.Uint32(body[4:8]))) || m.State != binary.NativeEndian.Uint16(body[8:10]) {
			t.Fatalf("Decode(%x): ifindex/state %d/%#x not the header's", body, m.Ifindex, m.State)
		}
		if m.HasMAC != ref.hasMAC || m.HasMAC && m.MAC != ref.mac || !m.HasMAC && m.MAC != (store.MAC{}) {
			t.Fatalf("Decode(%x): MAC %v/%v, attributes say %v/%v", body, m.HasMAC, m.MAC, ref.hasMAC, ref.mac)
		}
		switch m.Kind {
		case L3:
			if !ref.hasDst || m.IP != ref.dst || !m.IP.IsValid() {
				t.Fatalf("Decode(%x): L3 with IP %v, attributes say DST %v %v", body, m.IP, ref.hasDst, ref.dst)
			}
		case L2:
			if ref.hasDst || !m.HasMAC || m.IP.IsValid() {
				t.Fatalf("Decode(%x): L2 %+v, but attributes have DST %v", body, m, ref.hasDst)
			}
		default:
			t.Fatalf("Decode(%x): kind %v", body, m.Kind)
		}
		if !m.Received.IsZero() {
			t.Fatalf("Decode set Received")
		}
	})
}
