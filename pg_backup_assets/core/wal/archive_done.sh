# The shell side of asynchronous archiving (spool.py), for archive_command: exit 0, with no
# interpreter started, once the background pusher has made this WAL file durable; anything
# else is left to the command given after the first four arguments (pgbackup wal-push).
#
#   sh archive_done.sh SPOOL REPOSITORY %p %f COMMAND...
#
# "Durable" is the check spool.is_durable makes: SPOOL/<name>.ok names the very file asked
# about (device, inode, size, mtime and ctime, as GNU stat prints them) and an object of the
# repository that has the size it was written with. While a pusher runs (it holds
# SPOOL/pusher.lock) and has not failed this file, the call pokes it and waits for it: the
# pusher writes a byte into the FIFO SPOOL/done each time it finishes a push, so the call
# sleeps in a read until then, not in clock ticks. A pusher that dies closes that FIFO (the
# read ends at once) and is replaced by wal-push; so is one that finishes nothing for QUIET
# seconds.
spool=$1 repo=$2 path=$3 name=$4
shift 4
WAKES=64 # finished pushes waited through, at most
QUIET=2

durable() {
	[ -f "$spool/$name.ok" ] && read -r k n i <"$spool/$name.ok" || return 1
	case $k in "" | /* | *..*) return 1 ;; esac
	set -- $(stat -c '%d %i %s %.9Y %.9Z' -- "$path" "$repo/$k" 2>/dev/null)
	[ "$1 $2 $3 $4 $5" = "$i" ] && [ "$8" = "$n" ]
}

durable && exit 0
# Every process counts: PostgreSQL runs this once per WAL file, and under load it competes
# for the cores with the pusher. So: the lock looked at through a file descriptor (flock
# runs no command), one dd for the poke, and per wait one timeout and its dd, whose
# output tells a finished push (bytes) from a pusher gone (none).
pusher_runs() { # it holds its lock
	{ flock -n -E 75 9 9<"$spool/pusher.lock"; } 2>/dev/null
	[ $? -eq 75 ]
}
if [ -p "$spool/done" ] && [ -p "$spool/wake" ] && [ ! -f "$spool/$name.error" ] && pusher_runs; then
	dd if=/dev/zero of="$spool/wake" bs=1 count=1 oflag=nonblock status=none 2>/dev/null
	t=0
	while [ $t -lt $WAKES ]; do
		# One read: the bytes of the pushes finished since the last one (at least one), or
		# the end of the FIFO (the pusher is gone).
		got=$(timeout $QUIET dd if="$spool/done" bs=512 count=1 status=none 2>/dev/null; echo "$?")
		[ "${got##*[!0-9]}" = 124 ] && break
		durable && exit 0
		[ "$got" = 0 ] && break # no byte: the pusher is gone
		[ -f "$spool/$name.error" ] && break
		t=$((t + 1))
	done
fi
exec "$@"
