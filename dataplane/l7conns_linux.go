package dataplane

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// L7Conns is the L7 proxy's view of the dataplane: who a redirected
// connection came from and where it was going, and the identity its
// upstream sockets carry. It opens the maps an agent pinned; it is safe
// for concurrent use.
type L7Conns struct {
	conns   *ebpf.Map // sl_l7_conns
	proxied *ebpf.Map // sl_proxied
}

// ErrNoOrigin: the dataplane has no record of a connection; it did not
// come through an L7 service's VIP, or its record was already taken.
var ErrNoOrigin = errors.New("no record of this connection: it was not redirected to the L7 proxy by the dataplane")

// OpenL7Conns opens the maps pinned in pinDir by an agent.
func OpenL7Conns(pinDir string) (*L7Conns, error) {
	conns, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "sl_l7_conns"), nil)
	if err != nil {
		return nil, fmt.Errorf("open the L7 connection map in %s (is an agent running with this --pin-dir?): %w", pinDir, err)
	}
	proxied, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "sl_proxied"), nil)
	if err != nil {
		conns.Close()
		return nil, fmt.Errorf("open the L7 proxy's socket map in %s: %w", pinDir, err)
	}
	return &L7Conns{conns: conns, proxied: proxied}, nil
}

// Close releases the maps.
func (c *L7Conns) Close() error {
	return errors.Join(c.conns.Close(), c.proxied.Close())
}

// Take returns the origin of the connection from client and forgets it.
func (c *L7Conns) Take(client netip.AddrPort) (L7Origin, error) {
	a := client.Addr().Unmap()
	k := serviceSlL7Key{Addr: addrWords(a), Port: htons(client.Port()), Family: family(a)}
	var v serviceSlL7Origin
	if err := c.conns.LookupAndDelete(&k, &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return L7Origin{}, fmt.Errorf("connection from %s: %w", client, ErrNoOrigin)
		}
		return L7Origin{}, fmt.Errorf("connection from %s: look up its origin: %w", client, err)
	}
	vip := netip.AddrPortFrom(addrFromWords(v.Vip, v.Family), ntohs(v.Vport))
	return L7Origin{Service: vip, Identity: v.Identity}, nil
}

// Speak makes the socket fd — one of the proxy's, not yet connected —
// carry identity in its SYN's tag, as its client's own connection would.
func (c *L7Conns) Speak(fd int, identity uint32) error {
	if identity == 0 {
		return nil
	}
	v := serviceSlProxiedValue{Identity: identity}
	if err := c.proxied.Update(int32(fd), &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("tag an upstream socket with identity %d: %w", identity, err)
	}
	return nil
}
