package kubeproxy

import (
	"io"
	"net/netip"
	"strconv"
)

// WriteIPTables writes iptables-restore input that replaces the nat and
// filter tables with the rules kube-proxy's iptables mode would have for
// svcs (each table ends in COMMIT, so each is replaced whole or not at
// all). Traffic to a VIP from outside podCIDR is marked for masquerade.
// It validates every service before writing anything and streams the
// output, so memory stays small for any number of services.
func WriteIPTables(w io.Writer, svcs []Service, podCIDR netip.Prefix) error {
	if err := validate(svcs, podCIDR); err != nil {
		return err
	}
	return writeIPTables(w, svcs, podCIDR)
}

// writeIPTables is WriteIPTables for services already validated.
func writeIPTables(w io.Writer, svcs []Service, podCIDR netip.Prefix) error {
	o := newOut(w)
	writeIPTablesNAT(o, svcs, podCIDR)
	writeIPTablesFilter(o, svcs)
	return o.Flush()
}

func writeIPTablesNAT(o *out, svcs []Service, podCIDR netip.Prefix) {
	o.s("*nat\n",
		":PREROUTING ACCEPT [0:0]\n",
		":INPUT ACCEPT [0:0]\n",
		":OUTPUT ACCEPT [0:0]\n",
		":POSTROUTING ACCEPT [0:0]\n",
		":KUBE-SERVICES - [0:0]\n",
		":KUBE-MARK-MASQ - [0:0]\n",
		":KUBE-POSTROUTING - [0:0]\n")
	// Chains are declared before any rule jumps to them: a first pass.
	for i := range svcs {
		s := &svcs[i]
		if len(s.Endpoints) == 0 {
			continue
		}
		o.s(":")
		o.svcChain(s)
		o.s(" - [0:0]\n")
		for e := range s.Endpoints {
			o.s(":")
			o.sepChain(s, e)
			o.s(" - [0:0]\n")
		}
	}
	mark := "0x" + strconv.FormatUint(masqBit, 16)
	o.s(`-A PREROUTING -m comment --comment "service VIPs" -j KUBE-SERVICES`, "\n",
		`-A OUTPUT -m comment --comment "service VIPs" -j KUBE-SERVICES`, "\n",
		`-A POSTROUTING -m comment --comment "masquerade what was marked" -j KUBE-POSTROUTING`, "\n",
		"-A KUBE-MARK-MASQ -j MARK --or-mark ", mark, "\n",
		"-A KUBE-POSTROUTING -m mark ! --mark ", mark, "/", mark, " -j RETURN\n",
		// Clear the bit so a packet that loops through again is not
		// masqueraded twice.
		"-A KUBE-POSTROUTING -j MARK --xor-mark ", mark, "\n",
		"-A KUBE-POSTROUTING -j MASQUERADE --random-fully\n")
	for i := range svcs {
		s := &svcs[i]
		n := len(s.Endpoints)
		if n == 0 {
			continue // rejected in the filter table
		}
		o.s("-A KUBE-SERVICES -d ")
		o.addr(s.VIP)
		o.s("/32 -p ", s.Protocol, ` -m comment --comment "`)
		o.Write(appendServiceID(o.scratch[:0], s))
		o.s(` VIP" -m `, s.Protocol, " --dport ")
		o.uint(uint64(s.Port))
		o.s(" -j ")
		o.svcChain(s)
		o.s("\n")

		// Clients outside the pod network get masqueraded, so replies come
		// back through this node.
		o.s("-A ")
		o.svcChain(s)
		o.s(" ! -s ")
		o.prefix(podCIDR)
		o.s(" -d ")
		o.addr(s.VIP)
		o.s("/32 -p ", s.Protocol, " -m ", s.Protocol, " --dport ")
		o.uint(uint64(s.Port))
		o.s(" -j KUBE-MARK-MASQ\n")
		// Endpoint e of n is taken with probability 1/(n-e) among those
		// left, which makes every endpoint equally likely; the last one
		// takes what remains.
		for e := range s.Endpoints {
			o.s("-A ")
			o.svcChain(s)
			if e < n-1 {
				o.s(" -m statistic --mode random --probability ")
				o.Write(strconv.AppendFloat(o.scratch[:0], 1/float64(n-e), 'f', 10, 64))
			}
			o.s(" -j ")
			o.sepChain(s, e)
			o.s("\n")
		}
		for e, ep := range s.Endpoints {
			// An endpoint reaching itself through the VIP (hairpin) must
			// be masqueraded, or it would answer itself directly.
			o.s("-A ")
			o.sepChain(s, e)
			o.s(" -s ")
			o.addr(ep.Addr())
			o.s("/32 -j KUBE-MARK-MASQ\n")
			o.s("-A ")
			o.sepChain(s, e)
			o.s(" -p ", s.Protocol, " -m ", s.Protocol, " -j DNAT --to-destination ")
			o.addrPort(ep)
			o.s("\n")
		}
	}
	o.s("COMMIT\n")
}

func writeIPTablesFilter(o *out, svcs []Service) {
	mark := "0x" + strconv.FormatUint(masqBit, 16)
	o.s("*filter\n",
		":INPUT ACCEPT [0:0]\n",
		":FORWARD ACCEPT [0:0]\n",
		":OUTPUT ACCEPT [0:0]\n",
		":KUBE-SERVICES - [0:0]\n",
		":KUBE-FORWARD - [0:0]\n",
		`-A FORWARD -m comment --comment "forwarding of service traffic" -j KUBE-FORWARD`, "\n",
		`-A FORWARD -m conntrack --ctstate NEW -m comment --comment "services without endpoints" -j KUBE-SERVICES`, "\n",
		`-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "services without endpoints" -j KUBE-SERVICES`, "\n",
		"-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n",
		"-A KUBE-FORWARD -m mark --mark ", mark, "/", mark, " -j ACCEPT\n",
		"-A KUBE-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n")
	for i := range svcs {
		s := &svcs[i]
		if len(s.Endpoints) != 0 {
			continue
		}
		o.s("-A KUBE-SERVICES -d ")
		o.addr(s.VIP)
		o.s("/32 -p ", s.Protocol, ` -m comment --comment "`)
		o.Write(appendServiceID(o.scratch[:0], s))
		o.s(` has no endpoints" -m `, s.Protocol, " --dport ")
		o.uint(uint64(s.Port))
		o.s(" -j REJECT --reject-with icmp-port-unreachable\n")
	}
	o.s("COMMIT\n")
}
