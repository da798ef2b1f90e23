package miss

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
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
	// from and fromLen receive the sender's address; fields, so that the
	// read allocates nothing.
	from    unix.RawSockaddrNetlink
	fromLen uint32
	// miss is handed to the handler, which must not keep it: one Miss for
	// the listener's life rather than one on the heap per message.
	miss   Miss
	closed atomic.Bool
	// turns counts the read loop's rounds: see Turns.
	turns atomic.Uint64

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

// Close closes the socket. A Run in progress returns within readTimeout.
func (l *Listener) Close() error {
	l.closed.Store(true)
	return l.conn.Close()
}

// Turns counts the rounds of Run's read loop. The loop comes round at least
// once per readTimeout while it runs, message or not, so a count that stops
// growing says the miss path is stuck (in a handler, or a kernel write that
// does not return): what a watchdog should check.
func (l *Listener) Turns() uint64 { return l.turns.Load() }

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
	// The read loop owns an OS thread and sleeps in recvfrom on the socket
	// itself, so a miss wakes this very thread, in one step. Through the Go
	// poller, a wake-up goes to the poller's thread first and may be handed
	// to another: a microsecond budget spent on scheduling, measured at
	// tens of microseconds per miss on this machine class.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var runErr error
	err := l.raw.Control(func(fd uintptr) {
		runErr = l.loop(ctx, int(fd), handle, overflowed)
	})
	if err != nil {
		return fmt.Errorf("miss: socket: %w", err)
	}
	return runErr
}

// readTimeout bounds each blocking read, so that the loop notices a
// cancelled context or a closed listener.
const readTimeout = 200 * time.Millisecond

func (l *Listener) loop(ctx context.Context, fd int, handle func(m *Miss), overflowed func()) error {
	if l.closed.Load() {
		return errors.New("miss: listener closed")
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		return fmt.Errorf("miss: blocking mode: %w", err)
	}
	tv := unix.NsecToTimeval(readTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fmt.Errorf("miss: receive timeout: %w", err)
	}
	for {
		n, err := l.read(fd)
		l.turns.Add(1)
		switch {
		case err == nil:
		case err == unix.EAGAIN || err == unix.EINTR:
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if l.closed.Load() {
				return errors.New("miss: listener closed")
			}
			continue
		case err == unix.ENOBUFS:
			l.overflows.Add(1)
			if overflowed != nil {
				overflowed()
			}
			continue
		default:
			return fmt.Errorf("miss: read rtnetlink: %w", err)
		}
		if ctx.Err() != nil {
			return ctx.Err()
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
					l.miss = m
					l.miss.Received = now
					handle(&l.miss)
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

// read receives one datagram from the kernel into l.buf, blocking up to
// readTimeout. It calls recvfrom itself rather than through the netlink
// package so that it can see the sender's port (the kernel's is 0; anyone
// else's message is dropped) and so that a read allocates nothing: the
// sender's address lives in the listener.
func (l *Listener) read(fd int) (int, error) {
	for {
		l.fromLen = unix.SizeofSockaddrNetlink
		r, _, e := unix.Syscall6(unix.SYS_RECVFROM, uintptr(fd),
			uintptr(unsafe.Pointer(&l.buf[0])), uintptr(len(l.buf)), 0,
			uintptr(unsafe.Pointer(&l.from)), uintptr(unsafe.Pointer(&l.fromLen)))
		if e != 0 {
			return 0, e
		}
		if l.from.Pid != 0 {
			l.foreign.Add(1)
			continue
		}
		return int(r), nil
	}
}
