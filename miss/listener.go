package miss

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// DefaultReadBuffer is the receive buffer asked for. A neighbour
// notification costs about a kilobyte of buffer; 32 MiB holds a storm of
// tens of thousands of misses while the responder catches up, and is only
// charged while it is filled.
const DefaultReadBuffer = 32 << 20

// Listener receives the kernel's neighbour notifications on one rtnetlink
// socket subscribed to RTNLGRP_NEIGH, in the calling thread's network
// namespace.
type Listener struct {
	conn *netlink.Conn
	raw  syscall.RawConn
	buf  []byte

	overflows atomic.Uint64
	malformed atomic.Uint64
	foreign   atomic.Uint64
}

// ListenerStats counts what the socket delivered that was not a miss.
type ListenerStats struct {
	// Overflows counts ENOBUFS: the socket buffer overflowed and the kernel
	// dropped notifications. Lost misses come back with the kernel's next
	// probe, one retrans_time later.
	Overflows uint64
	// Malformed counts messages that could not be decoded.
	Malformed uint64
	// Foreign counts messages not sent by the kernel, which are dropped.
	Foreign uint64
}

// Listen subscribes to the kernel's neighbour notifications. readBuffer is
// the socket's receive buffer in bytes (0 for DefaultReadBuffer).
func Listen(readBuffer int) (*Listener, error) {
	if readBuffer <= 0 {
		readBuffer = DefaultReadBuffer
	}
	c, err := netlink.Dial(unix.NETLINK_ROUTE, nil)
	if err != nil {
		return nil, fmt.Errorf("miss: open rtnetlink: %w", err)
	}
	if err := c.JoinGroup(unix.RTNLGRP_NEIGH); err != nil {
		c.Close()
		return nil, fmt.Errorf("miss: join RTNLGRP_NEIGH: %w", err)
	}
	// As root this uses SO_RCVBUFFORCE and is not capped by rmem_max.
	if err := c.SetReadBuffer(readBuffer); err != nil {
		c.Close()
		return nil, fmt.Errorf("miss: set receive buffer to %d bytes: %w", readBuffer, err)
	}
	raw, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("miss: raw socket: %w", err)
	}
	return &Listener{conn: c, raw: raw, buf: make([]byte, 64<<10)}, nil
}

// Close closes the socket.
func (l *Listener) Close() error { return l.conn.Close() }

// ReadBuffer returns the receive buffer size the kernel granted.
func (l *Listener) ReadBuffer() (int, error) { return l.conn.ReadBuffer() }

// Stats returns the listener's counters.
func (l *Listener) Stats() ListenerStats {
	return ListenerStats{Overflows: l.overflows.Load(), Malformed: l.malformed.Load(), Foreign: l.foreign.Load()}
}

// Run reads notifications until ctx is done and calls handle for every miss
// (RTM_GETNEIGH) on any device, in order, on the calling goroutine. handle
// must not keep m. Ordinary RTM_NEWNEIGH/RTM_DELNEIGH state changes are not
// misses and are skipped.
//
// A socket overflow is counted, overflowed (if not nil) is called, and
// reading goes on at once: sleeping would only lose more (flannel#414,
// flannel#779). overflowed must not block; it is the caller's chance to
// recover the lost misses (Responder.Sweep) rather than wait for the
// kernel's retries, which arrive as one burst again.
func (l *Listener) Run(ctx context.Context, handle func(m *Miss), overflowed func()) error {
	// Clear the past deadline an earlier Run left behind when its context
	// was cancelled; otherwise every read fails at once and the loop below
	// spins on os.ErrDeadlineExceeded. Before AfterFunc, so that a context
	// that is already done still wakes this Run.
	if err := l.conn.SetReadDeadline(time.Time{}); err != nil {
		return fmt.Errorf("miss: clear read deadline: %w", err)
	}
	stop := context.AfterFunc(ctx, func() {
		// Wake the blocked read; the deadline error ends the loop below.
		l.conn.SetReadDeadline(time.Unix(1, 0))
	})
	defer stop()
	for {
		n, err := l.read()
		switch {
		case err == nil:
		case errors.Is(err, unix.ENOBUFS):
			l.overflows.Add(1)
			if overflowed != nil {
				overflowed()
			}
			continue
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, os.ErrDeadlineExceeded):
			// A deadline someone else set; ours is only set on cancel.
			continue
		default:
			return fmt.Errorf("miss: read rtnetlink: %w", err)
		}
		now := time.Now()
		for b := l.buf[:n]; len(b) >= unix.NLMSG_HDRLEN; {
			ml := int(binary.NativeEndian.Uint32(b[0:4]))
			typ := binary.NativeEndian.Uint16(b[4:6])
			if ml < unix.NLMSG_HDRLEN || ml > len(b) {
				l.malformed.Add(1)
				break
			}
			if typ == unix.RTM_GETNEIGH {
				m, err := Decode(b[unix.NLMSG_HDRLEN:ml])
				if err != nil {
					l.malformed.Add(1)
				} else {
					m.Received = now
					handle(&m)
				}
			}
			al := (ml + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1)
			if al > len(b) {
				break
			}
			b = b[al:]
		}
	}
}

// read receives one datagram from the kernel into l.buf. It calls recvfrom
// itself rather than through the netlink package so that it can see the
// sender's port (the kernel's is 0; anyone else's message is dropped) and
// so that a read allocates nothing.
func (l *Listener) read() (int, error) {
	for {
		var (
			n       int
			errno   syscall.Errno
			from    unix.RawSockaddrNetlink
			fromLen = uint32(unix.SizeofSockaddrNetlink)
		)
		err := l.raw.Read(func(fd uintptr) bool {
			r, _, e := unix.Syscall6(unix.SYS_RECVFROM, fd,
				uintptr(unsafe.Pointer(&l.buf[0])), uintptr(len(l.buf)), unix.MSG_DONTWAIT,
				uintptr(unsafe.Pointer(&from)), uintptr(unsafe.Pointer(&fromLen)))
			n, errno = int(r), e
			return errno != unix.EAGAIN
		})
		if err != nil {
			return 0, err
		}
		if errno != 0 {
			return 0, errno
		}
		if from.Pid != 0 {
			l.foreign.Add(1)
			continue
		}
		return n, nil
	}
}
