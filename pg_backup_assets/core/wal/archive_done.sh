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
pusher_runs() { # it holds its lock
	flock -n -E 75 "$spool/pusher.lock" true 2>/dev/null
	[ $? -eq 75 ]
}

if [ -p "$spool/done" ] && [ -p "$spool/wake" ] && [ ! -f "$spool/$name.error" ] && pusher_runs; then
	printf . | dd of="$spool/wake" oflag=nonblock status=none 2>/dev/null
	t=0
	while [ $t -lt $WAKES ]; do
		# One read: the bytes of the pushes finished since the last one (at least one), or
		# the end of the FIFO (the pusher is gone).
		timeout $QUIET dd if="$spool/done" of=/dev/null bs=512 count=1 status=none 2>/dev/null
		[ $? -eq 124 ] && break
		durable && exit 0
		[ -f "$spool/$name.error" ] && break
		pusher_runs || break
		t=$((t + 1))
	done
fi
exec "$@"
