package store

import (
	"iter"
	"math/bits"
	"math/rand/v2"
	"net/netip"
)

// The lookup side of the Table. A lookup by address or by VTEP MAC is one
// probe of a small open-addressing hash index, which names a slot of a dense
// array of records, one cache line each: two places in memory, where Go maps
// of *Lease touch four (the map's directory, control word and slot, then the
// lease's two or three cache lines). With 50,000 leases the records take
// 3.2 MB where the leases took 5.6: what a random lookup touches must stay
// within the CPU's caches and TLB reach, or every lookup waits for DRAM.

// record is an admitted lease packed into 64 bytes. Every lease read from
// etcd packs exactly (IPv4 addresses, a 24-bit VNI); one that does not is
// kept whole in Table.odd, and its record says so. A lease with an IPv6 part
// has it in a record6 in the same slot of Table.slots6: the two families'
// lookups read the same two records, and an IPv4-only overlay has no
// slots6 at all (its lookups read what they read before IPv6).
type record struct {
	key                          string
	createRev, modRev, etcdLease int64
	subnet, publicIP             uint32
	vni                          int32
	mac                          MAC
	bits                         uint8
	odd                          bool // the lease is in Table.odd
	flags                        uint8
}

// Record flags. They are set for an odd lease too: the MAC index reads them.
const (
	recV4   = 1 << iota // the lease has an IPv4 part: subnet, bits and mac are its
	recPub4             // publicIP is the lease's PublicIP (an IPv6-only lease may have none)
	recV6               // the lease has an IPv6 part, in Table.slots6
)

// record6 is the IPv6 part of an admitted lease, in 40 bytes (2 MB for
// 50,000 leases). A lookup reads it beside the lease's record: both
// addresses are known at once, so the two loads overlap. Its addresses are
// the bytes netip.AddrFrom16 reads: kept as 64-bit words (which would fit
// the record in 32 bytes), each lookup paid a stalled store-to-load forward
// (two 8-byte stores read back by one 16-byte load) to rebuild them, about
// as long as the lookup's other work.
type record6 struct {
	sub    [16]byte // the subnet's first address
	public [16]byte // PublicIPv6, if pub6
	mac    MAC
	bits   uint8
	pub6   bool
}

// pack returns l's records, and whether they say all of l.
func (t *Table) pack(l Lease) (record, record6, bool) {
	r := record{key: l.Key, createRev: l.CreateRevision, modRev: l.ModRevision, etcdLease: l.EtcdLease, mac: l.VtepMAC, vni: int32(l.VNI)}
	var r6 record6
	exact := int(r.vni) == l.VNI
	switch {
	case l.Subnet.IsValid():
		r.flags |= recV4
		if sa := l.Subnet.Addr(); sa.Is4() && l.PublicIP.Is4() {
			r.subnet, r.publicIP, r.bits = u32(sa), u32(l.PublicIP), uint8(l.Subnet.Bits())
			r.flags |= recPub4
		} else {
			exact = false
		}
	case l.PublicIP.Is4():
		r.publicIP = u32(l.PublicIP)
		r.flags |= recPub4
	}
	if l.IPv6Subnet.IsValid() {
		r.flags |= recV6
		r6.mac = l.VtepMACv6
		r6.sub, r6.bits = l.IPv6Subnet.Addr().As16(), uint8(l.IPv6Subnet.Bits())
		if l.PublicIPv6.IsValid() {
			r6.public, r6.pub6 = l.PublicIPv6.As16(), true
		}
	}
	if exact {
		// Whatever did not fit (an address of the other family, a zone)
		// does not come back.
		var back Lease
		r.unpack(&back)
		if r.flags&recV6 != 0 {
			r6.unpack(&back)
		}
		exact = back == l
	}
	r.odd = !exact
	return r, r6, exact
}

// lease unpacks a record that is not odd and has no IPv6 part.
func (r *record) lease() Lease {
	var l Lease
	r.unpack(&l)
	return l
}

// unpack writes the lease a record that is not odd packs into *l, less its
// IPv6 part: in place, for the lookups, which fill their result with it.
// *l must be the zero Lease (a lookup's result is): only the fields the
// record has are written, not the whole Lease again.
func (r *record) unpack(l *Lease) {
	l.Key, l.VtepMAC = r.key, r.mac
	if r.flags&recV4 != 0 {
		l.Subnet = netip.PrefixFrom(addrFrom(r.subnet), int(r.bits))
	}
	if r.flags&recPub4 != 0 {
		l.PublicIP = addrFrom(r.publicIP)
	}
	l.VNI = int(r.vni)
	l.CreateRevision, l.ModRevision, l.EtcdLease = r.createRev, r.modRev, r.etcdLease
}

// unpack writes the IPv6 part a record6 packs into *l.
func (r *record6) unpack(l *Lease) {
	l.IPv6Subnet = netip.PrefixFrom(netip.AddrFrom16(r.sub), int(r.bits))
	l.VtepMACv6 = r.mac
	if r.pub6 {
		l.PublicIPv6 = netip.AddrFrom16(r.public)
	}
}

// macKey packs a MAC into the low 48 bits of a uint64.
func macKey(m MAC) uint64 {
	return uint64(m[0])<<40 | uint64(m[1])<<32 | uint64(m[2])<<24 | uint64(m[3])<<16 | uint64(m[4])<<8 | uint64(m[5])
}

// macFingerprint is the key the MAC index files m under: 32 bits of a
// multiply-shift hash with the table's random odd multiplier. Two MACs may
// share one; the record says which MAC a slot holds.
func macFingerprint(m MAC, mul uint64) uint32 { return uint32((macKey(m) * mul) >> 32) }

// slotIndex maps 32-bit keys to slots: a hash table with linear probing, at
// most half full, of 8-byte entries, so that a probe nearly always ends in
// the cache line it starts in. Keys are hashed by multiplying with a random
// odd number and keeping the top bits, chosen anew whenever the index is
// resized: keys come from etcd, and whoever writes them must not be able to
// pile them onto one run of the index.
//
// The address indexes key by a subnet's first address, each key once. The
// MAC index keys by fingerprint, which several MACs may share: its users
// tell entries apart by the slot's record (the same functions).
type slotIndex struct {
	ents  []slotEntry // power-of-two length, or nil while empty
	n     int
	shift uint   // 64 - log2(len(ents))
	mul   uint64 // odd
}

type slotEntry struct {
	key uint32
	v   uint32 // slot+1; 0 marks an empty entry
}

const minIndexSize = 8

func (h *slotIndex) home(k uint32) uint64 { return (uint64(k) * h.mul) >> h.shift }

// get returns the slot stored under k, for an index whose keys are unique.
// It is small enough to be inlined into LookupIP.
func (h *slotIndex) get(k uint32) (int32, bool) {
	ents := h.ents
	mask := uint64(len(ents)) - 1
	// The loop's condition holds but for an empty index, and spares the
	// bounds check.
	for i := h.home(k); i < uint64(len(ents)); i = (i + 1) & mask {
		e := &ents[i]
		if e.v == 0 {
			break
		}
		if e.key == k {
			return int32(e.v - 1), true
		}
	}
	return 0, false
}

// put stores s under k. It replaces the entry under k whose slot same
// accepts (any entry under k if same is nil), or adds one.
func (h *slotIndex) put(k uint32, s int32, same func(int32) bool) {
	if 2*(h.n+1) > len(h.ents) {
		h.resize(max(minIndexSize, 2*len(h.ents)))
	}
	mask := uint64(len(h.ents) - 1)
	for i := h.home(k); ; i = (i + 1) & mask {
		e := &h.ents[i]
		if e.v == 0 {
			h.n++
		} else if e.key != k || same != nil && !same(int32(e.v-1)) {
			continue
		}
		*e = slotEntry{key: k, v: uint32(s) + 1}
		return
	}
}

// del removes the entry under k whose slot same accepts (any entry under k
// if same is nil), if there is one. It shifts back the entries after it that
// would not be found past the hole, so no tombstones accumulate.
func (h *slotIndex) del(k uint32, same func(int32) bool) {
	if h.n == 0 {
		return
	}
	mask := uint64(len(h.ents) - 1)
	i := h.home(k)
	for ; ; i = (i + 1) & mask {
		e := &h.ents[i]
		if e.v == 0 {
			return
		}
		if e.key == k && (same == nil || same(int32(e.v-1))) {
			break
		}
	}
	for j := (i + 1) & mask; h.ents[j].v != 0; j = (j + 1) & mask {
		// The entry at j may fill the hole at i if i is on its probe
		// sequence: between its home and j, cyclically.
		if home := h.home(h.ents[j].key); (i-home)&mask <= (j-home)&mask {
			h.ents[i] = h.ents[j]
			i = j
		}
	}
	h.ents[i] = slotEntry{}
	h.n--
	switch {
	case h.n == 0:
		*h = slotIndex{}
	case len(h.ents) > minIndexSize && 8*h.n < len(h.ents):
		h.resize(max(minIndexSize, 1<<bits.Len(uint(4*h.n-1))))
	}
}

func (h *slotIndex) resize(size int) {
	old := h.ents
	h.ents = make([]slotEntry, size)
	h.shift = uint(64 - bits.TrailingZeros(uint(size)))
	h.mul = rand.Uint64() | 1
	h.n = 0
	mask := uint64(size - 1)
	for _, e := range old {
		if e.v == 0 {
			continue
		}
		i := h.home(e.key)
		for h.ents[i].v != 0 {
			i = (i + 1) & mask
		}
		h.ents[i] = e
		h.n++
	}
}

// len is the number of entries.
func (h *slotIndex) len() int { return h.n }

// all yields every entry's key and slot, in no particular order. The index
// must not change during the iteration.
func (h *slotIndex) all() iter.Seq2[uint32, int32] {
	return func(yield func(uint32, int32) bool) {
		for _, e := range h.ents {
			if e.v != 0 && !yield(e.key, int32(e.v-1)) {
				return
			}
		}
	}
}

// lengthIndex indexes the admitted leases of one prefix length by their
// subnet's first address.
//
// When the overlay network has at most 1<<maxDirectBits subnets of the
// length (a /8 of /24s has 65,536), a lease's slot is found directly by its subnet's
// number in the network: a quarter of the hash index's memory at 50,000
// leases, no hashing and no probing. Leases outside the network, which the
// sync never admits, and lengths with more subnets go to a slotIndex.
type lengthIndex struct {
	bits int
	mask uint32

	direct      []uint32 // slot+1 by subnet number, or nil
	netBase     uint32   // the network's first address
	netMask     uint32
	directShift uint // 32 - bits
	nDirect     int

	bySubnet slotIndex
}

const maxDirectBits = 16

func newLengthIndex(bits int, network netip.Prefix) lengthIndex {
	li := lengthIndex{bits: bits, mask: prefixMask(bits)}
	if nb := network.Bits(); network.Addr().Is4() && bits >= nb && bits-nb <= maxDirectBits {
		li.direct = make([]uint32, 1<<(bits-nb))
		li.netBase = u32(network.Masked().Addr())
		li.netMask = prefixMask(nb)
		li.directShift = uint(32 - bits)
	}
	return li
}

// get returns the slot of the lease whose subnet starts at sub. LookupIP
// has it inlined by hand.
func (li *lengthIndex) get(sub uint32) (int32, bool) {
	if sub&li.netMask == li.netBase && li.direct != nil {
		if i := (sub - li.netBase) >> li.directShift; i < uint32(len(li.direct)) && li.direct[i] != 0 {
			return int32(li.direct[i] - 1), true
		}
		return 0, false
	}
	return li.bySubnet.get(sub)
}

// put stores s as the slot of the lease whose subnet starts at sub.
func (li *lengthIndex) put(sub uint32, s int32) {
	if sub&li.netMask == li.netBase && li.direct != nil {
		i := (sub - li.netBase) >> li.directShift
		if li.direct[i] == 0 {
			li.nDirect++
		}
		li.direct[i] = uint32(s) + 1
		return
	}
	li.bySubnet.put(sub, s, nil)
}

// del removes the lease whose subnet starts at sub.
func (li *lengthIndex) del(sub uint32) {
	if sub&li.netMask == li.netBase && li.direct != nil {
		i := (sub - li.netBase) >> li.directShift
		if li.direct[i] != 0 {
			li.nDirect--
		}
		li.direct[i] = 0
		return
	}
	li.bySubnet.del(sub, nil)
}

// len is the number of leases indexed.
func (li *lengthIndex) len() int { return li.nDirect + li.bySubnet.len() }

// all yields the first address and slot of every lease indexed. The index
// must not change during the iteration.
func (li *lengthIndex) all() iter.Seq2[uint32, int32] {
	return func(yield func(uint32, int32) bool) {
		for i, v := range li.direct {
			if v != 0 && !yield(li.netBase+uint32(i)<<li.directShift, int32(v-1)) {
				return
			}
		}
		for sub, s := range li.bySubnet.all() {
			if !yield(sub, s) {
				return
			}
		}
	}
}

// lengthIndex6 is lengthIndex for the IPv6 subnets of one prefix length:
// found directly by number when the IPv6 network has at most
// 1<<maxDirectBits subnets of the length (fd00:10::/48 of /64s has 65,536),
// else hashed by a fingerprint of the subnet's address, which several
// subnets may share: lookups tell them apart by the slot's record6, as the
// MAC index does. So an IPv6 lookup costs what an IPv4 one does: one probe,
// then the slot's records.
type lengthIndex6 struct {
	bits           int
	hiMask, loMask uint64

	direct               []uint32 // slot+1 by subnet number, or nil
	netHi, netLo         uint64   // the network's first address
	netHiMask, netLoMask uint64
	from                 uint // the network's length: a subnet's number starts at this bit
	directShift          uint // 64 - (bits - the network's length)
	nDirect              int

	fpMul    uint64 // odd, random: the fingerprint's multiplier
	bySubnet slotIndex
}

func newLengthIndex6(bits int, network netip.Prefix) lengthIndex6 {
	m := mask128(bits)
	li := lengthIndex6{bits: bits, hiMask: m.hi, loMask: m.lo, fpMul: rand.Uint64() | 1}
	if nb := network.Bits(); network.Addr().Is6() && bits >= nb && bits-nb <= maxDirectBits {
		nm := mask128(nb)
		a := u128Of(network.Masked().Addr())
		li.direct = make([]uint32, 1<<(bits-nb))
		li.netHi, li.netLo, li.netHiMask, li.netLoMask = a.hi, a.lo, nm.hi, nm.lo
		li.from, li.directShift = uint(nb), uint(64-(bits-nb))
	}
	return li
}

// bitsFrom is the 64 bits of the address hi:lo from bit n (0 to 127; past
// the end they are 0). Go's shifts by 64 or more are 0, and so are those by
// a count that wrapped around below zero: each term is there only when it
// should be.
func bitsFrom(hi, lo uint64, n uint) uint64 { return hi<<n | lo>>(64-n) | lo<<(n-64) }

// inDirect reports whether the subnet hi:lo (masked) is found by number,
// and which.
func (li *lengthIndex6) inDirect(hi, lo uint64) (uint64, bool) {
	if li.direct == nil || hi&li.netHiMask != li.netHi || lo&li.netLoMask != li.netLo {
		return 0, false
	}
	return bitsFrom(hi, lo, li.from) >> li.directShift, true
}

// fingerprint is the hash index's key for the subnet hi:lo.
func (li *lengthIndex6) fingerprint(hi, lo uint64) uint32 {
	return uint32(((hi*li.fpMul + lo) * li.fpMul) >> 32)
}

// put stores s as the slot of the lease whose IPv6 subnet starts at hi:lo.
func (li *lengthIndex6) put(hi, lo uint64, s int32) {
	if i, ok := li.inDirect(hi, lo); ok {
		if li.direct[i] == 0 {
			li.nDirect++
		}
		li.direct[i] = uint32(s) + 1
		return
	}
	li.bySubnet.put(li.fingerprint(hi, lo), s, func(o int32) bool { return o == s })
}

// del removes slot s, whose lease's IPv6 subnet starts at hi:lo.
func (li *lengthIndex6) del(hi, lo uint64, s int32) {
	if i, ok := li.inDirect(hi, lo); ok {
		if li.direct[i] != 0 {
			li.nDirect--
		}
		li.direct[i] = 0
		return
	}
	li.bySubnet.del(li.fingerprint(hi, lo), func(o int32) bool { return o == s })
}

// len is the number of leases indexed.
func (li *lengthIndex6) len() int { return li.nDirect + li.bySubnet.len() }

// all yields the slot of every lease indexed. The index must not change
// during the iteration.
func (li *lengthIndex6) all() iter.Seq[int32] {
	return func(yield func(int32) bool) {
		for _, v := range li.direct {
			if v != 0 && !yield(int32(v-1)) {
				return
			}
		}
		for _, s := range li.bySubnet.all() {
			if !yield(s) {
				return
			}
		}
	}
}
