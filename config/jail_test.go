package config

import "testing"

func TestParseJail(t *testing.T) {
	j, err := ParseJail("uid=1000,gid=100,dir=/run/vio")
	if err != nil || j != (Jail{UID: 1000, GID: 100, Dir: "/run/vio"}) {
		t.Fatalf("%+v %v", j, err)
	}
	for _, bad := range []string{"", "uid=1", "gid=1", "uid=0,gid=5", "uid=5,gid=0", "uid=-1,gid=5", "uid=x,gid=1", "uid=1,gid=1,chroot=/"} {
		if _, err := ParseJail(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
