package store

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
)

// u128 is an IPv6 address as a number, for the arithmetic of subnets
// (defaults, counts, the n-th subnet) that netip does not do. Shifts by 128
// or more give 0, as Go's shifts do.
type u128 struct{ hi, lo uint64 }

func u128Of(a netip.Addr) u128 {
	b := a.As16()
	return u128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

func (u u128) addr() netip.Addr {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], u.hi)
	binary.BigEndian.PutUint64(b[8:], u.lo)
	return netip.AddrFrom16(b)
}

func (u u128) add(v u128) u128 {
	lo, c := bits.Add64(u.lo, v.lo, 0)
	hi, _ := bits.Add64(u.hi, v.hi, c)
	return u128{hi, lo}
}

func (u u128) sub(v u128) u128 {
	lo, b := bits.Sub64(u.lo, v.lo, 0)
	hi, _ := bits.Sub64(u.hi, v.hi, b)
	return u128{hi, lo}
}

func (u u128) shl(n uint) u128 {
	switch {
	case n >= 128:
		return u128{}
	case n >= 64:
		return u128{u.lo << (n - 64), 0}
	default:
		return u128{u.hi<<n | u.lo>>(64-n), u.lo << n}
	}
}

func (u u128) shr(n uint) u128 {
	switch {
	case n >= 128:
		return u128{}
	case n >= 64:
		return u128{0, u.hi >> (n - 64)}
	default:
		return u128{u.hi >> n, u.lo>>n | u.hi<<(64-n)}
	}
}

func (u u128) and(v u128) u128 { return u128{u.hi & v.hi, u.lo & v.lo} }
func (u u128) or(v u128) u128  { return u128{u.hi | v.hi, u.lo | v.lo} }
func (u u128) not() u128       { return u128{^u.hi, ^u.lo} }

func (u u128) less(v u128) bool { return u.hi < v.hi || u.hi == v.hi && u.lo < v.lo }

// mask128 is the netmask of a prefix length.
func mask128(ones int) u128 { return u128{^uint64(0), ^uint64(0)}.shl(uint(128 - ones)) }

// one128Shl is 1<<n.
func one128Shl(n int) u128 { return u128{0, 1}.shl(uint(n)) }

// uint64Sat is u, or the largest uint64 if it is larger.
func (u u128) uint64Sat() uint64 {
	if u.hi != 0 {
		return ^uint64(0)
	}
	return u.lo
}
