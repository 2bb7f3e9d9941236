// The peer a team would write instead of this service: a Kafka Streams application
// (exactly_once_v2, a RocksDB store whose changelog is keyed per resource) that reads the same
// ingest messages and merges each record into its resource's state (RFC 7396, as the worker
// and bench.baselines' bare loops do). Run by bench/streams_peer.py:
//   java -cp 'libs/*:classes' MergeApp <bootstrap> <input topic> <application id> <avro schema> <records> <state dir>
// It prints "processed <n> records in <seconds> s" once <records> records have been merged
// and committed (timed from its first record), then exits.
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.File;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryDecoder;
import org.apache.avro.io.DecoderFactory;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.Stores;

public final class MergeApp {
    static final String STORE = "resources";
    static final ObjectMapper JSON = new ObjectMapper();
    static final AtomicLong merged = new AtomicLong();
    static volatile long firstNanos = 0;
    static long expected;
    static KafkaStreams streams;
    // The stream threads' commits when the last record was merged, read by the stream thread
    // that merged it (-1 until then): the commit that holds that record ends after it.
    static volatile double commitsBeforeLast = -1;

    /** RFC 7396: `patch` merged into `target` (null values delete fields). */
    static JsonNode mergePatch(JsonNode target, JsonNode patch) {
        if (!patch.isObject()) {
            return patch;
        }
        ObjectNode result = target != null && target.isObject() ? (ObjectNode) target : JSON.createObjectNode();
        for (Map.Entry<String, JsonNode> field : patch.properties()) {
            if (field.getValue().isNull()) {
                result.remove(field.getKey());
            } else {
                result.set(field.getKey(), mergePatch(result.get(field.getKey()), field.getValue()));
            }
        }
        return result;
    }

    static final class Merge implements Processor<byte[], byte[], Void, Void> {
        private final GenericDatumReader<GenericRecord> reader;
        private KeyValueStore<String, byte[]> store;
        private BinaryDecoder decoder;
        private GenericRecord message;

        Merge(Schema schema) {
            reader = new GenericDatumReader<>(schema);
        }

        @Override
        public void init(ProcessorContext<Void, Void> context) {
            store = context.getStateStore(STORE);
        }

        @Override
        public void process(Record<byte[], byte[]> record) {
            if (firstNanos == 0) {
                firstNanos = System.nanoTime();
            }
            try {
                decoder = DecoderFactory.get().binaryDecoder(record.value(), decoder);
                message = reader.read(message, decoder);
                String prefix = message.get("partnerId") + "/" + message.get("tenantId") + "/"
                        + message.get("schemaDefinitionId") + "/";
                for (Object item : (Iterable<?>) message.get("operations")) {
                    GenericRecord operation = (GenericRecord) item;
                    String key = prefix + operation.get("externalId");
                    byte[] old = store.get(key);
                    JsonNode patch = JSON.readTree(operation.get("data").toString());
                    JsonNode state = mergePatch(old == null ? null : JSON.readTree(old), patch);
                    store.put(key, JSON.writeValueAsBytes(state));
                    if (merged.incrementAndGet() == expected) {
                        commitsBeforeLast = commitTotal(streams);
                    }
                }
            } catch (java.io.IOException e) {
                throw new RuntimeException(e);
            }
        }
    }

    /** Commits the stream threads have completed (their `commit-total` metric). */
    static double commitTotal(KafkaStreams streams) {
        double total = 0;
        for (org.apache.kafka.common.Metric metric : streams.metrics().values()) {
            if (metric.metricName().name().equals("commit-total")
                    && metric.metricName().group().equals("stream-thread-metrics")) {
                total += ((Number) metric.metricValue()).doubleValue();
            }
        }
        return total;
    }

    public static void main(String[] args) throws Exception {
        String bootstrap = args[0], input = args[1], applicationId = args[2];
        Schema schema = new Schema.Parser().parse(new File(args[3]));
        expected = Long.parseLong(args[4]);
        Properties props = new Properties();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, applicationId);
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        props.put(StreamsConfig.STATE_DIR_CONFIG, args[5]);
        props.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");
        // Every other setting is Kafka Streams' default (commit.interval.ms 100 under exactly-once,
        // one stream thread, the default RocksDB options and record cache).
        StreamsBuilder builder = new StreamsBuilder();
        builder.addStateStore(Stores.keyValueStoreBuilder(Stores.persistentKeyValueStore(STORE),
                Serdes.String(), Serdes.ByteArray()));
        builder.stream(input, org.apache.kafka.streams.kstream.Consumed.with(Serdes.ByteArray(), Serdes.ByteArray()))
                .process(() -> new Merge(schema), STORE);
        streams = new KafkaStreams(builder.build(), props);
        CountDownLatch failed = new CountDownLatch(1);
        streams.setUncaughtExceptionHandler(e -> {
            e.printStackTrace();
            failed.countDown();
            return org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse
                    .SHUTDOWN_CLIENT;
        });
        streams.start();
        // Done once every record is merged and committed (the store's changelog and the input
        // offsets together; the commit interval is 100 ms). The stream thread processes and
        // commits in turn: the first commit to end after the last record was merged holds them
        // all. (Counting commits from when this thread saw the last record instead missed that
        // commit when it ended within this loop's 5 ms, and waited for one that never came.)
        while (commitsBeforeLast < 0 && failed.getCount() > 0) {
            Thread.sleep(5);
        }
        while (commitTotal(streams) <= commitsBeforeLast && failed.getCount() > 0) {
            Thread.sleep(1);
        }
        double seconds = (System.nanoTime() - firstNanos) / 1e9;
        System.out.println("processed " + merged.get() + " records in " + seconds + " s");
        System.out.flush();
        streams.close(Duration.ofSeconds(30));
        System.exit(failed.getCount() > 0 ? 0 : 1);
    }
}
