"""
One command source per arm: the single publisher of ``psm1/servo_cp`` an arm follows; no ROS.

The slave and the watchdog both keep a :class:`CommandSource`. Every command carries its
publisher's gid (rclpy ``MessageInfo['publisher_gid']``); the graph (``get_publishers_info_
by_topic``) maps gids to node names. The rule, the same in both nodes so that they pin the
same publisher:

- nothing pinned: a command is accepted, and its publisher pinned, only if that publisher is
  the only one on the topic. With two or more (two consoles started on one arm, a second
  node next to the relay) every command is refused until all but one have gone;
- pinned: commands from any other publisher are refused and counted (``second_source``),
  and :attr:`intruder` names the last one;
- the pinned publisher disappears from the graph: nothing is pinned until the rule above
  pins the next one; :meth:`accept` then reports a *change*, and the arm goes through HOLD
  and re-alignment before it follows the new source.

gids are bytes; times are seconds of any monotonic clock.
"""
from dataclasses import dataclass

ACCEPT = 'accept'            # from the pinned publisher (or just pinned)
SECOND = 'second_source'     # another publisher while one is pinned
SEVERAL = 'several_sources'  # nothing pinned and several publishers on the topic
UNKNOWN = 'unknown_source'   # the publisher is not in the graph yet (refresh and retry)


@dataclass(frozen=True)
class Intruder:
    """The last refused publisher: when, its gid and its node name."""

    time: float
    gid: bytes
    name: str


class CommandSource:
    """The pinned publisher of one command topic, and the count of refused commands."""

    def __init__(self, topic):
        self.topic = topic
        self.pinned = None           # gid of the publisher followed
        self.pinned_name = ''
        self.publishers = {}         # gid -> node name, from the last graph update
        self.second_source = 0       # commands refused: another publisher, or several
        self.intruder = None         # Intruder: the last refused publisher
        self.changes = 0             # pins after a pinned source had disappeared
        self.lost = ''               # name of the source that disappeared, until the next pin
        self.just_changed = False    # the last accept() pinned a new source after a loss

    def update_graph(self, publishers):
        """
        Take the publishers now on the topic (``{gid: node name}``).

        Return the name of the pinned source if it has just disappeared, else ''.
        """
        self.publishers = dict(publishers)
        if self.pinned is not None and self.pinned not in self.publishers:
            gone, self.lost = self.pinned_name, self.pinned_name
            self.pinned, self.pinned_name = None, ''
            return gone
        if self.pinned is not None:
            self.pinned_name = self.publishers[self.pinned]
        return ''

    def name_of(self, gid):
        return self.publishers.get(gid, 'unknown node')

    def accept(self, gid, now):
        """Judge one command by its publisher's gid; return ACCEPT, SECOND, SEVERAL or UNKNOWN."""
        self.just_changed = False
        if gid == self.pinned:
            return ACCEPT
        if self.pinned is not None:
            return self._refuse(SECOND, gid, now)
        if gid not in self.publishers:
            return UNKNOWN
        if len(self.publishers) > 1:
            return self._refuse(SEVERAL, gid, now)
        self.pinned, self.pinned_name = gid, self.publishers[gid]
        if self.lost:
            self.changes += 1
            self.just_changed = True
            self.lost = ''
        return ACCEPT

    def refuse_unknown(self, gid, now):
        """Refuse a command whose publisher is still unknown after a graph refresh."""
        return self._refuse(SECOND if self.pinned is not None else SEVERAL, gid, now)

    def _refuse(self, verdict, gid, now):
        self.second_source += 1
        self.intruder = Intruder(now, gid, self.name_of(gid))
        return verdict

    def reason(self, verdict):
        """Return the text of a refusal, naming the node (what the watchdog's HOLD says)."""
        if verdict == SEVERAL:
            names = sorted(self.publishers.values()) or [self.intruder.name]
            return f'several command sources on {self.topic}: nodes {", ".join(names)}'
        return f'second command source on {self.topic}: node {self.intruder.name}'


def node_name(namespace, name):
    """Return a node's name as reasons show it: ``network_relay``, ``arm1/network_relay``."""
    namespace = namespace.strip('/')
    return f'{namespace}/{name}' if namespace else name
