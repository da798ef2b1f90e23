package fabric

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"syscall"
	"unsafe"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// writer sends the two writes of the miss path, a neighbour entry and an
// FDB entry, on a socket of its own, built in a reusable buffer. It exists
// for speed alone: through vishvananda/netlink a write costs about 9 µs and
// 17 allocations, through writer about 3.6 µs and none (BenchmarkKernelWrites
// in test/netns). Every other kernel write goes through vishvananda/netlink.
//
// Several writes can go in one datagram: only the last asks for an
// acknowledgement, and the kernel reports a failed one by itself, so a batch
// costs one sendto and one recvfrom however long it is. The kernel handles
// the messages of a datagram one after another, in order, each on its own:
// an FDB entry queued before a neighbour entry is in place when the
// neighbour's queued packets are sent.
//
// Addresses are IPv4 or IPv6 (NDA_DST of 4 or 16 bytes): a neighbour entry
// is AF_INET or AF_INET6 by its address, an FDB entry's destination is the
// underlay's family, whatever the overlay's.
type writer struct {
	fd      int
	ifindex int
	seq     uint32
	buf     []byte
	n       int // messages in buf, numbered w.seq-n+1 to w.seq
	last    int // offset of the last message in buf
	ack     []byte
	// failed lists the writes of the last flush the kernel refused.
	failed []failure
}

// failure is a write of a batch the kernel refused: its index, and why.
type failure struct {
	i     int
	errno syscall.Errno
}

// maxBatch bounds a batch: 128 messages of at most 60 bytes is 7.5 KiB,
// well within a socket's send buffer.
const maxBatch = 128

// Sizes of a message: netlink header, ndmsg, two attributes.
const (
	sizeofNdmsg   = 12
	sizeofNeighW  = unix.NLMSG_HDRLEN + sizeofNdmsg + 8 + 12  // NDA_DST(4), NDA_LLADDR(6, padded)
	sizeofNeigh6W = unix.NLMSG_HDRLEN + sizeofNdmsg + 20 + 12 // NDA_DST(16), NDA_LLADDR(6, padded)
)

// newWriter opens a writer's socket in ns (netns.None(): the calling
// thread's namespace).
func newWriter(ns netns.NsHandle, ifindex int) (*writer, error) {
	fd, err := socketIn(ns)
	if err != nil {
		return nil, err
	}
	// Blocking: the ack is queued before sendto returns, and a kernel that
	// has not answered within five seconds is wedged.
	tv := unix.NsecToTimeval(5e9)
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("fabric: rtnetlink receive timeout: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("fabric: bind rtnetlink: %w", err)
	}
	return &writer{
		fd: fd, ifindex: ifindex,
		buf:    make([]byte, 0, maxBatch*sizeofNeigh6W),
		ack:    make([]byte, 64<<10),
		failed: make([]failure, 0, maxBatch),
	}, nil
}

// socketIn opens a blocking rtnetlink socket in ns.
func socketIn(ns netns.NsHandle) (int, error) {
	if !ns.IsOpen() {
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
		if err != nil {
			return -1, fmt.Errorf("fabric: open rtnetlink: %w", err)
		}
		return fd, nil
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return -1, fmt.Errorf("fabric: current namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		return -1, fmt.Errorf("fabric: enter namespace: %w", err)
	}
	fd, serr := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err := netns.Set(orig); err != nil {
		// Stay locked: the thread dies with its goroutine rather than run
		// anything else in the wrong namespace.
		if serr == nil {
			unix.Close(fd)
		}
		return -1, fmt.Errorf("fabric: leave namespace: %w", err)
	}
	runtime.UnlockOSThread()
	if serr != nil {
		return -1, fmt.Errorf("fabric: open rtnetlink: %w", serr)
	}
	return fd, nil
}

func (w *writer) close() error { return unix.Close(w.fd) }

// neigh queues "ip lladdr mac nud permanent" (or "nud reachable") on the
// device, AF_INET or AF_INET6 by ip's family. ip is valid and unmapped.
func (w *writer) neigh(ip netip.Addr, mac [6]byte, permanent bool) {
	state := uint16(unix.NUD_REACHABLE)
	if permanent {
		state = unix.NUD_PERMANENT
	}
	family := uint8(unix.AF_INET)
	if ip.Is6() {
		family = unix.AF_INET6
	}
	w.put(family, state, 0, ip, mac)
}

// fdb queues "mac dst dst self permanent" on the device.
func (w *writer) fdb(mac [6]byte, dst netip.Addr) {
	w.put(unix.AF_BRIDGE, unix.NUD_PERMANENT, unix.NTF_SELF, dst, mac)
}

// put appends one RTM_NEWNEIGH (create or replace) to the batch: dst (4 or
// 16 bytes by its family; valid and unmapped), lladdr mac.
func (w *writer) put(family uint8, state uint16, flags uint8, dst netip.Addr, mac [6]byte) {
	size, alen := sizeofNeighW, 4
	if dst.Is6() {
		size, alen = sizeofNeigh6W, 16
	}
	w.seq++
	off := len(w.buf)
	w.buf = w.buf[:off+size]
	w.last = off
	b := w.buf[off:]
	clear(b)
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], uint32(size))
	ne.PutUint16(b[4:], unix.RTM_NEWNEIGH)
	ne.PutUint16(b[6:], unix.NLM_F_REQUEST|unix.NLM_F_CREATE|unix.NLM_F_REPLACE)
	ne.PutUint32(b[8:], w.seq)
	b[16] = family
	ne.PutUint32(b[20:], uint32(w.ifindex))
	ne.PutUint16(b[24:], state)
	b[26] = flags
	ne.PutUint16(b[28:], uint16(4+alen))
	ne.PutUint16(b[30:], unix.NDA_DST)
	if alen == 4 {
		a := dst.As4()
		copy(b[32:36], a[:])
	} else {
		a := dst.As16()
		copy(b[32:48], a[:])
	}
	ll := b[32+alen:]
	ne.PutUint16(ll[0:], 10)
	ne.PutUint16(ll[2:], unix.NDA_LLADDR)
	copy(ll[4:10], mac[:])
	w.n++
}

// flush sends the batch and waits for the kernel. The writes the kernel
// refused are in w.failed afterwards; the error says the batch could not be
// sent or acknowledged at all.
func (w *writer) flush() error {
	w.failed = w.failed[:0]
	if w.n == 0 {
		return nil
	}
	defer func() {
		w.buf, w.n = w.buf[:0], 0
	}()
	// Only the last write asks for an ack: the kernel reports errors of
	// the others unasked, in order, before it.
	last := w.buf[w.last:]
	binary.NativeEndian.PutUint16(last[6:], binary.NativeEndian.Uint16(last[6:])|unix.NLM_F_ACK)
	var to unix.RawSockaddrNetlink
	to.Family = unix.AF_NETLINK
	if _, _, e := unix.Syscall6(unix.SYS_SENDTO, uintptr(w.fd), uintptr(unsafe.Pointer(&w.buf[0])), uintptr(len(w.buf)),
		0, uintptr(unsafe.Pointer(&to)), unsafe.Sizeof(to)); e != 0 {
		return e
	}
	first, lastSeq := w.seq-uint32(w.n)+1, w.seq
	for {
		r, _, e := unix.Syscall6(unix.SYS_RECVFROM, uintptr(w.fd), uintptr(unsafe.Pointer(&w.ack[0])), uintptr(len(w.ack)), 0, 0, 0)
		if e != 0 {
			if e == unix.EINTR {
				continue
			}
			return fmt.Errorf("waiting for the kernel's ack: %w", e)
		}
		for b := w.ack[:r]; len(b) >= unix.NLMSG_HDRLEN; {
			ne := binary.NativeEndian
			l := int(ne.Uint32(b[0:4]))
			if l < unix.NLMSG_HDRLEN || l > len(b) {
				return errors.New("malformed ack from the kernel")
			}
			typ, seq := ne.Uint16(b[4:6]), ne.Uint32(b[8:12])
			if typ == unix.NLMSG_ERROR && l >= unix.NLMSG_HDRLEN+4 && seq >= first && seq <= lastSeq {
				if code := int32(ne.Uint32(b[16:20])); code != 0 {
					w.failed = append(w.failed, failure{int(seq - first), syscall.Errno(-code)})
				}
				if seq == lastSeq {
					return nil
				}
			}
			al := (l + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1)
			if al >= len(b) {
				break
			}
			b = b[al:]
		}
	}
}
