package metrics

// ServeOn is Serve on a listener the test made, so it knows the port.
var ServeOn = (*Metrics).ServeListener
