package translate

import (
	"net/netip"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/sluice-mesh/sluice/dataplane/model"
)

// vip returns the service address a listener address names. Errors are
// relative to the Address.
func (t *tally) vip(a *corev3.Address, ap, sp *policy) (netip.AddrPort, model.Protocol, *fieldError) {
	sa, ip, err := t.socketIP(a, ap, sp)
	if err != nil {
		return netip.AddrPort{}, 0, err
	}
	if ip.IsUnspecified() || ip.IsLoopback() || ip.IsMulticast() {
		return netip.AddrPort{}, 0, errAt("socket_address.address",
			"%s is not a service VIP (unspecified, loopback or multicast); Sluice matches connections by the address clients dial", ip)
	}
	port, err := portOf(sa)
	if err != nil {
		return netip.AddrPort{}, 0, err
	}
	var proto model.Protocol
	switch sa.GetProtocol() {
	case corev3.SocketAddress_TCP:
		proto = model.TCP
	case corev3.SocketAddress_UDP:
		proto = model.UDP
	default:
		return netip.AddrPort{}, 0, errAt("socket_address.protocol", "unknown protocol %d; want TCP or UDP", int32(sa.GetProtocol()))
	}
	return netip.AddrPortFrom(ip, port), proto, nil
}

// backend returns the address of an endpoint; anyPort allows port 0.
// Errors are relative to the Address.
func (t *tally) backend(a *corev3.Address, anyPort bool) (netip.AddrPort, *fieldError) {
	sa, ip, err := t.socketIP(a, endpointAddressPolicy, endpointSocketPolicy)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if ip.IsUnspecified() || ip.IsMulticast() {
		return netip.AddrPort{}, errAt("socket_address.address", "%s is not a backend address (unspecified or multicast)", ip)
	}
	if anyPort && sa.GetPortValue() == 0 {
		return netip.AddrPortFrom(ip, 0), nil
	}
	port, err := portOf(sa)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(ip, port), nil
}

// socketIP checks an Address against its policies and parses its IP.
func (t *tally) socketIP(a *corev3.Address, ap, sp *policy) (*corev3.SocketAddress, netip.Addr, *fieldError) {
	if a == nil {
		return nil, netip.Addr{}, errAt("", "missing")
	}
	if err := t.check(a.ProtoReflect(), ap); err != nil {
		return nil, netip.Addr{}, err
	}
	sa := a.GetSocketAddress()
	if sa == nil {
		return nil, netip.Addr{}, errAt("socket_address", "missing")
	}
	if err := t.check(sa.ProtoReflect(), sp); err != nil {
		return nil, netip.Addr{}, err.in("socket_address")
	}
	ip, err := parseIP(sa.GetAddress())
	if err != nil {
		return nil, netip.Addr{}, err.in("socket_address.address")
	}
	return sa, ip, nil
}

// parseIP parses an IP literal in the one form the model accepts: no zone,
// IPv4 never written as IPv4-mapped IPv6 (the dataplane keys IPv4 services
// by their 4-byte form; a mapped VIP would never match).
func parseIP(s string) (netip.Addr, *fieldError) {
	ip, err := netip.ParseAddr(s)
	switch {
	case err != nil:
		return netip.Addr{}, errAt("", "%q is not an IP address literal (Sluice does not resolve names)", s)
	case ip.Zone() != "":
		return netip.Addr{}, errAt("", "%s has a zone; zones are not supported", ip)
	case ip.Is4In6():
		return netip.Addr{}, errAt("", "%s is IPv4-mapped IPv6; use the IPv4 form %s", ip, ip.Unmap())
	}
	return ip, nil
}

func portOf(sa *corev3.SocketAddress) (uint16, *fieldError) {
	p := sa.GetPortValue()
	if p == 0 || p > 65535 {
		return 0, errAt("socket_address.port_value", "%d is not a port (want 1..65535)", p)
	}
	return uint16(p), nil
}
