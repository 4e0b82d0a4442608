package throttle

// SetOnQueue lets the external tests learn, without polling, that a
// request has started waiting.
func SetOnQueue(g *Group, f func(n int)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.onQueue = f
}
