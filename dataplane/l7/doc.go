// Package l7 is Sluice's L7 proxy: it serves the HTTP requests (HTTP/1.1,
// cleartext HTTP/2, gRPC) of connections redirected from L7 service VIPs,
// and forwards each to an endpoint as its service's routes say.
//
// The routing decisions need no I/O and are usable on their own: which
// route a request takes (Router), which cluster and endpoint it goes to
// (Pick, PickEndpoint) and how its path and headers change (Rewrite,
// EditHeaders). Proxy is the engine around them (docs/l7.md), and
// RecordSender takes the record of each request it served to the agent
// (WireRecord, POST RecordsPath).
package l7
