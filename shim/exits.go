package shim

import (
	"time"

	runc "github.com/containerd/go-runc"
)

// reapExits hands every reaped child's exit to whoever waits for that pid, or keeps it
// for a minute for a waiter that has not registered yet.
func (s *Service) reapExits(exits chan runc.Exit) {
	for e := range exits {
		s.mu.Lock()
		if ch, ok := s.pidWaiters[e.Pid]; ok {
			delete(s.pidWaiters, e.Pid)
			ch <- e.Status
		} else {
			s.unclaimed[e.Pid] = e
			for pid, old := range s.unclaimed {
				if time.Since(old.Timestamp) > time.Minute {
					delete(s.unclaimed, pid)
				}
			}
		}
		s.mu.Unlock()
	}
}

// awaitPid returns a channel that receives pid's exit status once it is reaped.
func (s *Service) awaitPid(pid int) <-chan int {
	ch := make(chan int, 1)
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.unclaimed[pid]; ok {
		delete(s.unclaimed, pid)
		ch <- e.Status
		return ch
	}
	s.pidWaiters[pid] = ch
	return ch
}
