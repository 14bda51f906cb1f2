// Package xds is Sluice's xDS client: it keeps one ADS stream to a control
// plane (State-of-the-World or Delta), translates the resources it receives
// into the dataplane model, applies them, and ACKs or NACKs each response.
//
// The translation lives in xds/translate, the embedded control plane in
// xds/controlplane and the mesh file it serves in xds/mesh. Nothing here
// touches the kernel; the state goes to an Applier (the dataplane).
package xds
