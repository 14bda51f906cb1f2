package kubeproxy

import (
	"bufio"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
)

// Service is one port of a cluster-IP service, with the endpoints that
// back it.
type Service struct {
	Namespace, Name string // Kubernetes names: DNS labels
	VIP             netip.Addr
	Port            uint16
	Protocol        string           // "tcp" or "udp"
	Endpoints       []netip.AddrPort // none: connections are rejected
}

// String names the service in errors: namespace/name VIP:port/protocol.
func (s *Service) String() string {
	return fmt.Sprintf("%s/%s %s/%s", s.Namespace, s.Name, netip.AddrPortFrom(s.VIP, s.Port), s.Protocol)
}

// Mode is the kube-proxy mode whose rules are imitated.
type Mode string

// The modes: the rules kube-proxy's iptables mode writes, loaded with
// iptables-restore, and those of its nftables mode, loaded with nft.
const (
	IPTables Mode = "iptables"
	NFTables Mode = "nftables"
)

// ErrInvalid is wrapped by every error about the services or pod CIDR
// handed in; nothing is written when it is returned.
var ErrInvalid = errors.New("invalid input")

// masqBit is the packet mark bit that asks postrouting to masquerade (the
// bit kube-proxy uses by default).
const masqBit = 0x4000

// elementBatch is how many map elements one nft command adds, so that no
// single command grows with the number of services.
const elementBatch = 1000

type svcKey struct {
	vip   [4]byte
	port  uint16
	proto string
}

// validate checks everything before a byte is written, so a bad input
// never half-applies.
func validate(svcs []Service, podCIDR netip.Prefix) error {
	if !podCIDR.IsValid() || !podCIDR.Addr().Is4() || podCIDR.Masked() != podCIDR {
		return fmt.Errorf("%w: pod CIDR %s: want an IPv4 prefix with no host bits set", ErrInvalid, podCIDR)
	}
	vips := make(map[svcKey]int, len(svcs))
	names := make(map[string]int, len(svcs))
	for i := range svcs {
		s := &svcs[i]
		bad := func(format string, args ...any) error {
			return fmt.Errorf("%w: service #%d %q: %s", ErrInvalid, i, s.String(), fmt.Sprintf(format, args...))
		}
		if err := checkLabel(s.Namespace); err != nil {
			return bad("namespace %v", err)
		}
		if err := checkLabel(s.Name); err != nil {
			return bad("name %v", err)
		}
		if !s.VIP.Is4() || s.VIP.IsUnspecified() {
			return bad("VIP %s is not a usable IPv4 address", s.VIP)
		}
		if s.Port == 0 {
			return bad("port 0")
		}
		if s.Protocol != "tcp" && s.Protocol != "udp" {
			return bad("protocol %q: want tcp or udp", s.Protocol)
		}
		k := svcKey{s.VIP.As4(), s.Port, s.Protocol}
		if j, dup := vips[k]; dup {
			return bad("same VIP, port and protocol as service #%d %q", j, svcs[j].String())
		}
		vips[k] = i
		// The chains are named after namespace/name:port/protocol.
		id := string(appendServiceID(nil, s))
		if j, dup := names[id]; dup {
			return bad("same namespace, name, port and protocol as service #%d %q", j, svcs[j].String())
		}
		names[id] = i
		if err := checkEndpoints(s.Endpoints); err != nil {
			return bad("%v", err)
		}
	}
	return nil
}

// checkEndpoints accepts distinct IPv4 addresses with ports; each endpoint
// has its chain, named after it.
func checkEndpoints(eps []netip.AddrPort) error {
	var seen map[netip.AddrPort]bool // for long lists only: most have a few
	for e, ep := range eps {
		if !ep.Addr().Is4() || ep.Addr().IsUnspecified() || ep.Port() == 0 {
			return fmt.Errorf("endpoint %s: want a usable IPv4 address and a port other than 0", ep)
		}
		dup := false
		if len(eps) <= 16 {
			dup = slices.Contains(eps[:e], ep)
		} else {
			if seen == nil {
				seen = make(map[netip.AddrPort]bool, len(eps))
			}
			dup, seen[ep] = seen[ep], true
		}
		if dup {
			return fmt.Errorf("endpoint %s listed twice", ep)
		}
	}
	return nil
}

// checkLabel accepts a DNS label (RFC 1123), as Kubernetes names
// namespaces and services; the generated chain names and comments rely on
// it having no other characters.
func checkLabel(s string) error {
	switch {
	case s == "":
		return errors.New("is empty")
	case len(s) > 63:
		return fmt.Errorf("%q is longer than 63 characters", s)
	case s[0] == '-' || s[len(s)-1] == '-':
		return fmt.Errorf("%q starts or ends with '-'", s)
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("%q has a character other than a-z, 0-9 and '-'", s)
		}
	}
	return nil
}

// appendServiceID appends what the chain names of s derive from:
// namespace/name:port/protocol.
func appendServiceID(b []byte, s *Service) []byte {
	b = append(append(append(b, s.Namespace...), '/'), s.Name...)
	b = strconv.AppendUint(append(b, ':'), uint64(s.Port), 10)
	return append(append(b, '/'), s.Protocol...)
}

// appendEndpointID appends what the chain names of endpoint ep of s
// derive from.
func appendEndpointID(b []byte, s *Service, ep netip.AddrPort) []byte {
	return ep.AppendTo(append(appendServiceID(b, s), '@'))
}

// out is a buffered writer with helpers that append numbers, addresses
// and chain names without allocating; errors stick and surface at Flush.
type out struct {
	*bufio.Writer
	scratch []byte
	enc     [16]byte

	// The hashes of the service last named, and of its endpoints: each
	// chain name is written several times.
	hashed  *Service
	svcHash hash
	epHash  []hash
}

// hash is the part of a SHA-256 that chain names use.
type hash [10]byte

func newOut(w io.Writer) *out {
	return &out{Writer: bufio.NewWriterSize(w, 256<<10), scratch: make([]byte, 0, 256)}
}

func (o *out) s(parts ...string) {
	for _, p := range parts {
		o.WriteString(p)
	}
}

func (o *out) uint(v uint64) { o.Write(strconv.AppendUint(o.scratch[:0], v, 10)) }

func (o *out) addr(a netip.Addr) { o.Write(a.AppendTo(o.scratch[:0])) }

func (o *out) addrPort(ap netip.AddrPort) { o.Write(ap.AppendTo(o.scratch[:0])) }

func (o *out) prefix(p netip.Prefix) { o.Write(p.AppendTo(o.scratch[:0])) }

// hashes computes the hashes of s and its endpoints, unless they are those
// of the service last named.
func (o *out) hashes(s *Service) {
	if o.hashed == s {
		return
	}
	o.hashed = s
	sum := sha256.Sum256(appendServiceID(o.scratch[:0], s))
	o.svcHash = hash(sum[:len(hash{})])
	o.epHash = o.epHash[:0]
	for _, ep := range s.Endpoints {
		sum := sha256.Sum256(appendEndpointID(o.scratch[:0], s, ep))
		o.epHash = append(o.epHash, hash(sum[:len(hash{})]))
	}
}

// svcChain writes the iptables chain name of s: KUBE-SVC- and 16 base32
// characters of the SHA-256 of its id, as iptables chain names are
// limited to 28 characters, too few for a readable name.
func (o *out) svcChain(s *Service) {
	o.hashes(s)
	o.base32("KUBE-SVC-", o.svcHash)
}

// sepChain writes the iptables chain name of endpoint e of s.
func (o *out) sepChain(s *Service, e int) {
	o.hashes(s)
	o.base32("KUBE-SEP-", o.epHash[e])
}

func (o *out) base32(prefix string, h hash) {
	base32.StdEncoding.Encode(o.enc[:], h[:]) // 80 bits, 16 characters
	o.WriteString(prefix)
	o.Write(o.enc[:])
}

// hex writes 8 hex characters of h.
func (o *out) hex(h hash) {
	hex.Encode(o.enc[:8], h[:4])
	o.Write(o.enc[:8])
}
