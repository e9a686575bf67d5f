"""Topic names: part of the contract (consumers subscribe by these names, subjects are
``<topic>-value``). Their partitions and configs are provisioning, in ``infra/topics.py``."""

# Raw topics: one per vendor connection kind. One feed connection writes with one key, so its
# frames stay in order in one partition.
RAW_MASSIVE_STOCKS = "raw.massive.stocks"
RAW_MASSIVE_OPTIONS = "raw.massive.options"
RAW_MASSIVE_REST = "raw.massive.rest"
RAW_DATABENTO = "raw.databento.dbn"
RAW_TOPICS = (RAW_MASSIVE_STOCKS, RAW_MASSIVE_OPTIONS, RAW_MASSIVE_REST, RAW_DATABENTO)

STOCK_QUOTES = "market.stocks.quotes"
STOCK_TRADES = "market.stocks.trades"
OPTION_TRADES = "market.options.trades"
OPTION_QUOTES = "market.options.quotes"
FUTURES_TRADES = "market.futures.trades"
FUTURES_MBP10 = "market.futures.mbp10"
HEALTH = "market.health"
ALERTS = "market.alerts"
DEAD_LETTER = "market.deadletter"
# Our own executions (TradeJournal), key = strategy.
TRADE_JOURNAL = "journal.trades"
NORMALIZED_TOPICS = (
    STOCK_QUOTES,
    STOCK_TRADES,
    OPTION_TRADES,
    OPTION_QUOTES,
    FUTURES_TRADES,
    FUTURES_MBP10,
)

# Large frames (REST pages, DBN chunks) need more than Kafka's default 1 MB per message.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
