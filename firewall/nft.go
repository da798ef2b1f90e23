package firewall

import (
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// Offsets of the addresses in the IPv4 header.
const (
	offSaddr = 12
	offDaddr = 16
)

// nftRule is a rule as vtepd writes it: its expressions and the comment
// that marks it as vtepd's. The comment goes where nft(8) keeps a rule's
// comment (user data, type comment), so `nft list ruleset` shows it.
type nftRule struct {
	comment string
	exprs   []expr.Any
}

// text is how the rule reads back from the kernel (see render).
func (r nftRule) text() string { return render(r.exprs, r.comment) }

func (r nftRule) in(c *nftables.Chain) *nftables.Rule {
	return &nftables.Rule{
		Table:    c.Table,
		Chain:    c,
		Exprs:    r.exprs,
		UserData: userdata.AppendString(nil, userdata.TypeComment, r.comment),
	}
}

func commentOf(r *nftables.Rule) string {
	s, _ := userdata.GetString(r.UserData, userdata.TypeComment)
	return s
}

// textOf renders a rule read from the kernel.
func textOf(r *nftables.Rule) string { return render(r.Exprs, commentOf(r)) }

// ip matches the IPv4 source or destination address (off) against p, or
// against everything outside p when not is set.
func ip(off uint32, p netip.Prefix, not bool) []expr.Any {
	a := p.Addr().As4()
	e := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4}}
	if p.Bits() < 32 {
		e = append(e, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: net.CIDRMask(p.Bits(), 32), Xor: make([]byte, 4)})
	}
	op := expr.CmpOpEq
	if not {
		op = expr.CmpOpNeq
	}
	return append(e, &expr.Cmp{Op: op, Register: 1, Data: a[:]})
}

// ipv4Only is what nft puts before an IPv4 match in an inet chain, which
// sees IPv6 packets too.
func ipv4Only() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
	}
}

var (
	counter = &expr.Counter{}
	accept  = &expr.Verdict{Kind: expr.VerdictAccept}
)

// render writes expressions the way nft(8) lists them, for the subset vtepd
// writes (address matches, counter, verdicts, masquerade); anything else
// shows as its Go type. Comparing rendered text rather than expressions
// makes checks indifferent to what the kernel fills in on the way back
// (counter values, registers), and gives tests and logs something to read.
func render(exprs []expr.Any, comment string) string {
	var out []string
	field, bits := "", -1
	for _, e := range exprs {
		switch e := e.(type) {
		case *expr.Meta:
			field = fmt.Sprintf("meta key %d", e.Key)
			if e.Key == expr.MetaKeyNFPROTO {
				field = "meta nfproto"
			}
		case *expr.Payload:
			field, bits = fmt.Sprintf("payload %d@%d,%d", e.Len, e.Base, e.Offset), -1
			if e.Base == expr.PayloadBaseNetworkHeader && e.Len == 4 {
				switch e.Offset {
				case offSaddr:
					field = "ip saddr"
				case offDaddr:
					field = "ip daddr"
				}
			}
		case *expr.Bitwise:
			if ones, size := net.IPMask(e.Mask).Size(); size == 32 {
				bits = ones
			}
		case *expr.Cmp:
			out = append(out, field+" "+cmpOp(e.Op)+value(field, e.Data, bits))
			field, bits = "", -1
		case *expr.Counter:
			out = append(out, "counter")
		case *expr.Verdict:
			out = append(out, verdict(e))
		case *expr.NAT:
			s := "snat"
			if e.Type == expr.NATTypeDestNAT {
				s = "dnat"
			}
			if field != "" {
				s += " to " + field
			}
			field, bits = "", -1
			out = append(out, s)
		case *expr.Masq:
			s := "masquerade"
			if e.Random {
				s += " random"
			}
			if e.FullyRandom {
				s += " fully-random"
			}
			if e.Persistent {
				s += " persistent"
			}
			out = append(out, s)
		default:
			out = append(out, fmt.Sprintf("%T", e))
		}
	}
	if comment != "" {
		out = append(out, fmt.Sprintf("comment %q", comment))
	}
	return strings.Join(out, " ")
}

func cmpOp(op expr.CmpOp) string {
	if s, ok := map[expr.CmpOp]string{expr.CmpOpEq: "", expr.CmpOpNeq: "!= "}[op]; ok {
		return s
	}
	return fmt.Sprintf("op%d ", op)
}

func value(field string, data []byte, bits int) string {
	switch {
	case field == "meta nfproto" && len(data) == 1 && data[0] == unix.NFPROTO_IPV4:
		return "ipv4"
	case field == "meta nfproto" && len(data) == 1 && data[0] == unix.NFPROTO_IPV6:
		return "ipv6"
	case len(data) == 4:
		a := netip.AddrFrom4([4]byte(data))
		if bits >= 0 && bits < 32 {
			return netip.PrefixFrom(a, bits).String()
		}
		return a.String()
	}
	return "0x" + hex.EncodeToString(data)
}

var verdicts = map[expr.VerdictKind]string{
	expr.VerdictAccept: "accept", expr.VerdictDrop: "drop", expr.VerdictReturn: "return",
	expr.VerdictContinue: "continue", expr.VerdictJump: "jump", expr.VerdictGoto: "goto",
}

func verdict(v *expr.Verdict) string {
	s, ok := verdicts[v.Kind]
	if !ok {
		return fmt.Sprintf("verdict %d", v.Kind)
	}
	if v.Chain != "" {
		s += " " + v.Chain
	}
	return s
}

// cat joins expression lists into one rule body.
func cat(parts ...[]expr.Any) []expr.Any { return slices.Concat(parts...) }

func one(e expr.Any) []expr.Any { return []expr.Any{e} }

var families = map[nftables.TableFamily]string{
	nftables.TableFamilyIPv4: "ip", nftables.TableFamilyINet: "inet", nftables.TableFamilyIPv6: "ip6",
	nftables.TableFamilyBridge: "bridge", nftables.TableFamilyNetdev: "netdev", nftables.TableFamilyARP: "arp",
}

func family(f nftables.TableFamily) string {
	if s, ok := families[f]; ok {
		return s
	}
	return fmt.Sprintf("family%d", f)
}

// chainName names a chain the way nft(8) addresses it: "inet fw forward".
func chainName(c *nftables.Chain) string {
	return family(c.Table.Family) + " " + c.Table.Name + " " + c.Name
}
