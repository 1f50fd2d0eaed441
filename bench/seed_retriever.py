"""The seed notebook's MilvusColbertRetriever (milvus-io/bootcamp use_ColPali_with_milvus, copied from
/work/shared/seed/use_ColPali_with_milvus.md), kept verbatim as the benchmark's baseline.

The one change to the class (marked `BENCH CHANGE` below) lets it run on pymilvus 3.0.2 + milvus-lite 3.2.2:
`create_index` drops only indexes that exist. The imports below are the notebook's (those the class uses).
Seed behaviours kept on purpose (they are what is being measured), and what bench/run.py does around them:
- `search` uses the notebook's module-global `client`, not `self.client`: bench/run.py sets `seed_retriever.client`
  to the same MilvusClient, as the notebook's global would be.
- `create_index` releases the collection and never loads it again; in the notebook's single-process flow Milvus
  Lite 3.2.2 still answers searches, so no load call is added.
- the rerank fetch uses `limit=1000`, so pages with more than 1000 vectors (ColPali: 1030) are scored on an arbitrary
  1000 of them: its scores can differ from exact MaxSim (recall < 1 even when every right page is a candidate).
- `search` reranks every candidate page with one filtered `query` per page on up to 300 threads.
- `enable_dynamic_fields` (sic) is passed to create_schema as the seed does.
bench/run.py flushes the collection after the inserts (not in the notebook; --seed-no-flush turns it off): without it
each per-page fetch reads the memtable and the first search at 200 pages takes over 10 minutes instead of about one."""
import concurrent.futures

import numpy as np
from pymilvus import DataType


class MilvusColbertRetriever:
    def __init__(self, milvus_client, collection_name, dim=128):
        # Initialize the retriever with a Milvus client, collection name, and dimensionality of the vector embeddings.
        # If the collection exists, load it.
        self.collection_name = collection_name
        self.client = milvus_client
        if self.client.has_collection(collection_name=self.collection_name):
            self.client.load_collection(collection_name)
        self.dim = dim

    def create_collection(self):
        # Create a new collection in Milvus for storing embeddings.
        # Drop the existing collection if it already exists and define the schema for the collection.
        if self.client.has_collection(collection_name=self.collection_name):
            self.client.drop_collection(collection_name=self.collection_name)
        schema = self.client.create_schema(
            auto_id=True,
            enable_dynamic_fields=True,
        )
        schema.add_field(field_name="pk", datatype=DataType.INT64, is_primary=True)
        schema.add_field(
            field_name="vector", datatype=DataType.FLOAT_VECTOR, dim=self.dim
        )
        schema.add_field(field_name="seq_id", datatype=DataType.INT16)
        schema.add_field(field_name="doc_id", datatype=DataType.INT64)
        schema.add_field(field_name="doc", datatype=DataType.VARCHAR, max_length=65535)

        self.client.create_collection(
            collection_name=self.collection_name, schema=schema
        )

    def create_index(self):
        # Create an index on the vector field to enable fast similarity search.
        # Releases and drops any existing index before creating a new one with specified parameters.
        self.client.release_collection(collection_name=self.collection_name)
        # BENCH CHANGE 1 of 1: the seed called drop_index unconditionally; pymilvus 3.0.2 + milvus-lite 3.2.2 raise
        # MilvusException(code=700, "no index to drop") when the collection has no index yet (always the case right
        # after create_collection), so drop only indexes that `list_indexes` reports. Nothing else differs from the
        # seed.
        for _name in self.client.list_indexes(collection_name=self.collection_name):
            self.client.drop_index(
                collection_name=self.collection_name, index_name=_name
            )
        index_params = self.client.prepare_index_params()
        index_params.add_index(
            field_name="vector",
            index_name="vector_index",
            index_type="HNSW",  # or any other index type you want
            metric_type="IP",  # or the appropriate metric type
            params={
                "M": 16,
                "efConstruction": 500,
            },  # adjust these parameters as needed
        )

        self.client.create_index(
            collection_name=self.collection_name, index_params=index_params, sync=True
        )

    def create_scalar_index(self):
        # Create a scalar index for the "doc_id" field to enable fast lookups by document ID.
        self.client.release_collection(collection_name=self.collection_name)

        index_params = self.client.prepare_index_params()
        index_params.add_index(
            field_name="doc_id",
            index_name="int32_index",
            index_type="INVERTED",  # or any other index type you want
        )

        self.client.create_index(
            collection_name=self.collection_name, index_params=index_params, sync=True
        )

    def search(self, data, topk):
        # Perform a vector search on the collection to find the top-k most similar documents.
        search_params = {"metric_type": "IP", "params": {}}
        results = self.client.search(
            self.collection_name,
            data,
            limit=int(50),
            output_fields=["vector", "seq_id", "doc_id"],
            search_params=search_params,
        )
        doc_ids = set()
        for r_id in range(len(results)):
            for r in range(len(results[r_id])):
                doc_ids.add(results[r_id][r]["entity"]["doc_id"])

        scores = []

        def rerank_single_doc(doc_id, data, client, collection_name):
            # Rerank a single document by retrieving its embeddings and calculating the similarity with the query.
            doc_colbert_vecs = client.query(
                collection_name=collection_name,
                filter=f"doc_id in [{doc_id}]",
                output_fields=["seq_id", "vector", "doc"],
                limit=1000,
            )
            doc_vecs = np.vstack(
                [doc_colbert_vecs[i]["vector"] for i in range(len(doc_colbert_vecs))]
            )
            score = np.dot(data, doc_vecs.T).max(1).sum()
            return (score, doc_id)

        with concurrent.futures.ThreadPoolExecutor(max_workers=300) as executor:
            futures = {
                executor.submit(
                    # `client`: the seed notebook's module global, which bench/run.py sets (kept verbatim)
                    rerank_single_doc, doc_id, data, client, self.collection_name  # noqa: F821
                ): doc_id
                for doc_id in doc_ids
            }
            for future in concurrent.futures.as_completed(futures):
                score, doc_id = future.result()
                scores.append((score, doc_id))

        scores.sort(key=lambda x: x[0], reverse=True)
        if len(scores) >= topk:
            return scores[:topk]
        else:
            return scores

    def insert(self, data):
        # Insert ColBERT embeddings and metadata for a document into the collection.
        colbert_vecs = [vec for vec in data["colbert_vecs"]]
        seq_length = len(colbert_vecs)
        doc_ids = [data["doc_id"] for i in range(seq_length)]
        seq_ids = list(range(seq_length))
        docs = [""] * seq_length
        docs[0] = data["filepath"]

        # Insert the data as multiple vectors (one for each sequence) along with the corresponding metadata.
        self.client.insert(
            self.collection_name,
            [
                {
                    "vector": colbert_vecs[i],
                    "seq_id": seq_ids[i],
                    "doc_id": doc_ids[i],
                    "doc": docs[i],
                }
                for i in range(seq_length)
            ],
        )
