# The shell side of asynchronous archiving (spool.py), for archive_command: exit 0, with no
# interpreter started, once the background pusher has made this WAL file durable; anything
# else is left to the command given after the first four arguments (pgbackup wal-push).
#
#   sh archive_done.sh SPOOL REPOSITORY %p %f COMMAND...
#
# "Durable" is the check spool.is_durable makes: SPOOL/<name>.ok names the very file asked
# about (device, inode, size, mtime and ctime, as GNU stat prints them) and an object of the
# repository that has the size it was written with. While a pusher runs (it holds
# SPOOL/pusher.lock) and has not failed this file, the call pokes it and waits for it up to
# WAIT_TICKS x 10 ms, instead of paying for an interpreter that would only wait too; it
# looks at the lock every 100 ms, so a pusher that died is replaced (by wal-push) at once.
spool=$1 repo=$2 path=$3 name=$4
shift 4
WAIT_TICKS=200

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

if [ -p "$spool/wake" ] && [ ! -f "$spool/$name.error" ] && pusher_runs; then
	printf . | dd of="$spool/wake" oflag=nonblock status=none 2>/dev/null
	t=1
	while [ $t -le $WAIT_TICKS ]; do
		sleep 0.01
		durable && exit 0
		[ -f "$spool/$name.error" ] && break
		# A pusher that died (killed, crashed): wal-push starts the next one.
		[ $((t % 10)) -eq 0 ] && ! pusher_runs && break
		t=$((t + 1))
	done
fi
exec "$@"
