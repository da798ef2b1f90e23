package netns

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// ICMP (or ICMPv6, by the destination's family) echo from a container, sent
// by the test process itself through a raw socket opened in the container's
// namespace: the same packets ping(8)
// sends, through the same kernel path, without a process per ping, and with
// an exact count when a stream of them is stopped (a ping killed with
// SIGINT cannot tell a reply in flight from a loss).

// echoSocket is a raw ICMP socket in a lab namespace. A raw socket sees
// every ICMP packet of its namespace; replies are told apart by id.
type echoSocket struct {
	conn *net.IPConn
	id   uint16
	v6   bool // ICMPv6: echo request 128, reply 129
}

// openEcho opens an ICMP socket in ns for echoes to dst's family, bound to
// src if it is valid.
func openEcho(ns string, dst, src netip.Addr) (*echoSocket, error) {
	v6 := dst.Unmap().Is6()
	family, proto := unix.AF_INET, unix.IPPROTO_ICMP
	if v6 {
		family, proto = unix.AF_INET6, unix.IPPROTO_ICMPV6
	}
	var fd int
	err := Do(ns, func() error {
		var err error
		fd, err = unix.Socket(family, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		if err == nil && src.IsValid() {
			if err = unix.Bind(fd, &unix.SockaddrInet6{Addr: src.As16()}); err != nil {
				unix.Close(fd)
			}
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netns: ICMP socket in %s: %w", ns, err)
	}
	f := os.NewFile(uintptr(fd), "icmp-"+ns)
	defer f.Close() // FilePacketConn holds a duplicate
	pc, err := net.FilePacketConn(f)
	if err != nil {
		return nil, fmt.Errorf("netns: ICMP socket in %s: %w", ns, err)
	}
	return &echoSocket{conn: pc.(*net.IPConn), id: uint16(rand.N(1 << 16)), v6: v6}, nil
}

func (s *echoSocket) close() error { return s.conn.Close() }

// send sends echo request seq to dst, 56 bytes of payload as ping's.
func (s *echoSocket) send(dst netip.Addr, seq uint16) error {
	b := make([]byte, 8+56)
	b[0] = 8 // echo request; code 0
	if s.v6 {
		b[0] = 128
	}
	binary.BigEndian.PutUint16(b[4:], s.id)
	binary.BigEndian.PutUint16(b[6:], seq)
	binary.BigEndian.PutUint64(b[8:], uint64(time.Now().UnixNano()))
	if !s.v6 {
		// An ICMPv6 raw socket's checksum is the kernel's (it covers a
		// pseudo-header only the kernel knows).
		binary.BigEndian.PutUint16(b[2:], checksum(b))
	}
	_, err := s.conn.WriteToIP(b, &net.IPAddr{IP: dst.AsSlice()})
	return err
}

// recv returns the sequence number of the next echo reply for this socket
// from src, waiting until deadline.
func (s *echoSocket) recv(src netip.Addr, deadline time.Time) (uint16, error) {
	if err := s.conn.SetReadDeadline(deadline); err != nil {
		return 0, err
	}
	b := make([]byte, 1500)
	reply := byte(0)
	if s.v6 {
		reply = 129
	}
	for {
		n, from, err := s.conn.ReadFromIP(b) // the IP header is stripped
		if err != nil {
			return 0, err
		}
		a, _ := netip.AddrFromSlice(from.IP)
		if n < 8 || b[0] != reply || a.Unmap() != src || binary.BigEndian.Uint16(b[4:]) != s.id {
			continue
		}
		return binary.BigEndian.Uint16(b[6:]), nil
	}
}

// source is the address echoes to addr leave the container from: for IPv6
// its primary address (the kernel would pick the newest of its addresses,
// and the reply path with it), for IPv4 the kernel's choice, which is the
// primary address.
func (c *Container) source(addr netip.Addr) netip.Addr {
	if addr.Is6() {
		return c.Addr6
	}
	return netip.Addr{}
}

func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// Echo sends one ICMP echo request from the container to addr and waits up
// to timeout for the reply, as `ping -c1 -W<timeout>` does. It returns
// whether the reply came, and its round trip.
func (c *Container) Echo(addr netip.Addr, timeout time.Duration) (bool, time.Duration, error) {
	s, err := openEcho(c.NS, addr, c.source(addr))
	if err != nil {
		return false, 0, err
	}
	defer s.close()
	start := time.Now()
	if err := s.send(addr, 1); err != nil {
		// The kernel refuses at once what it cannot route: a loss, as
		// ping counts it.
		return false, 0, nil
	}
	for {
		seq, err := s.recv(addr, start.Add(timeout))
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return false, 0, nil
		}
		if err != nil {
			return false, 0, fmt.Errorf("netns: echo %s from %s: %w", addr, c.NS, err)
		}
		if seq == 1 {
			return true, time.Since(start), nil
		}
	}
}

// Flow is a steady stream of ICMP echo requests from a container to one
// address, for tests of no loss across an event: start it, wait until it
// flows, cause the event, wait for replies after it, stop it. Stop waits
// for the replies still due, so the count of losses is exact.
type Flow struct {
	addr     netip.Addr
	interval time.Duration
	timeout  time.Duration
	sock     *echoSocket
	stop     chan struct{}
	sent     chan struct{} // closed when the sender has stopped

	mu      sync.Mutex
	sentAt  []time.Time // by seq-1
	replied []bool
	replies int

	stopOnce sync.Once
	result   FlowResult
}

// FlowResult is what a stopped flow counted.
type FlowResult struct {
	Sent, Received int
	// Lost are the sequence numbers (from 1) never answered.
	Lost []int
}

// StartFlow starts sending echo requests from the container to addr, one
// every interval, each to be answered within a second.
func (c *Container) StartFlow(addr netip.Addr, interval time.Duration) (*Flow, error) {
	s, err := openEcho(c.NS, addr, c.source(addr))
	if err != nil {
		return nil, err
	}
	f := &Flow{addr: addr, interval: interval, timeout: time.Second, sock: s, stop: make(chan struct{}), sent: make(chan struct{})}
	go f.receive()
	go f.send()
	return f, nil
}

func (f *Flow) send() {
	defer close(f.sent)
	tick := time.NewTicker(f.interval)
	defer tick.Stop()
	for {
		f.mu.Lock()
		seq := len(f.sentAt) + 1
		f.sentAt = append(f.sentAt, time.Now())
		f.replied = append(f.replied, false)
		f.mu.Unlock()
		// A send the kernel refuses (no route, no neighbour room) is a
		// request that gets no reply: a loss.
		f.sock.send(f.addr, uint16(seq))
		select {
		case <-f.stop:
			return
		case <-tick.C:
		}
	}
}

func (f *Flow) receive() {
	for {
		seq, err := f.sock.recv(f.addr, time.Time{})
		if err != nil {
			return // the socket was closed by Stop
		}
		f.mu.Lock()
		// Sequence numbers wrap at 65536: a flow at 100/s for 10 minutes.
		// The reply belongs to the latest request with that number.
		for i := len(f.sentAt) - 1; i >= 0; i-- {
			if uint16(i+1) == seq {
				if !f.replied[i] && time.Since(f.sentAt[i]) <= f.timeout {
					f.replied[i] = true
					f.replies++
				}
				break
			}
		}
		f.mu.Unlock()
	}
}

// Replies is how many requests have been answered so far.
func (f *Flow) Replies() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.replies
}

// WaitReplies waits until n more requests than now have been answered, or
// timeout passes.
func (f *Flow) WaitReplies(n int, timeout time.Duration) error {
	want := f.Replies() + n
	return poll(timeout, func() error {
		if got := f.Replies(); got < want {
			return fmt.Errorf("netns: flow to %s: %d of %d replies", f.addr, got, want)
		}
		return nil
	})
}

// Stop stops sending, waits until every request has been answered or has
// had its second, and returns the counts. Later calls return the same.
func (f *Flow) Stop() FlowResult {
	f.stopOnce.Do(func() { f.result = f.halt() })
	return f.result
}

func (f *Flow) halt() FlowResult {
	close(f.stop)
	<-f.sent
	f.mu.Lock()
	last := f.sentAt[len(f.sentAt)-1]
	f.mu.Unlock()
	poll(time.Until(last.Add(f.timeout)), func() error {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.replies < len(f.sentAt) {
			return errors.New("replies due")
		}
		return nil
	})
	f.sock.close()
	f.mu.Lock()
	defer f.mu.Unlock()
	r := FlowResult{Sent: len(f.sentAt), Received: f.replies}
	for i, ok := range f.replied {
		if !ok {
			r.Lost = append(r.Lost, i+1)
		}
	}
	return r
}
